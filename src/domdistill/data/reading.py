"""Low-level reading shared by every loader: streamed lines with exact error positions,
typed field access, and a collector that checks ids, labels and emptiness.

Every problem becomes an :class:`~domdistill.errors.InputError` naming the file, the line
(or row) and the field; nothing is ever written.
"""

from __future__ import annotations

import gzip
import json
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from domdistill.data.example import DomainDataset, DomainExample
from domdistill.errors import InputError

MAX_LINE_BYTES = 16 * 2**20  # longer lines are an error, not a memory spike
_INVISIBLE = {"Cc", "Cf", "Zl", "Zp", "Co", "Cn"}  # control, format (zero-width), separators
_SUFFIXES = (".gz", ".jsonl", ".json", ".csv", ".tsv", ".txt", ".tar", ".tgz", ".parquet", ".arrow")


def source_stem(path: str | Path) -> str:
    """File name without its data suffixes: ``r52-train.txt`` -> ``r52-train``,
    ``x.jsonl.gz`` -> ``x``. Used for default example ids ``f"{stem}-{line}"``."""
    name = Path(path).name
    while True:
        for suffix in _SUFFIXES:
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                break
        else:
            return name


def open_binary(path: Path) -> IO[bytes]:
    """Open a file for binary streaming, transparently un-gzipping ``.gz``."""
    if not path.exists():
        raise InputError("file does not exist", path=path)
    if path.is_dir():
        raise InputError("expected a file, found a folder", path=path)
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return path.open("rb")


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` one line at a time (1-based, newline stripped).

    Non-UTF-8 bytes raise an InputError naming the line and the byte offset in the file
    (for ``.gz`` files, in the uncompressed stream). A truncated gzip stream is an error too, and
    so is a line longer than ``MAX_LINE_BYTES`` (read no further than that).
    """
    offset = 0
    with open_binary(path) as f:
        try:
            for number, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), start=1):
                if len(raw) > MAX_LINE_BYTES:
                    raise InputError(f"line is longer than {MAX_LINE_BYTES // 2**20} MiB (a file "
                                     "without line breaks, or not a text data file?)",
                                     path=path, line=number)
                try:
                    text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as err:
                    where = "uncompressed byte" if path.name.lower().endswith(".gz") else "byte"
                    raise InputError(f"not valid UTF-8 text ({err.reason}) at {where} offset "
                                     f"{offset + err.start}", path=path, line=number) from None
                offset += len(raw)
                yield number, text.rstrip("\r\n")
        except (OSError, EOFError) as err:  # damaged gzip
            raise InputError(f"cannot read file: {err}", path=path) from None


class StrictJSONError(ValueError):
    """JSON that Python's parser accepts but the standard does not (NaN, a repeated key)."""


def _refuse_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not a JSON value (write a number or a string)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise StrictJSONError(f"key {key[:60]!r} appears twice in one object")
        out[key] = value
    return out


def loads_json(text: str, *, path: Path | str, line: int | None = None) -> Any:
    """Parse one JSON document as the standard defines it: ``NaN``/``Infinity`` and repeated
    keys are errors, and so is nesting too deep to walk; every error names file and line."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise InputError(f"malformed JSON ({err.msg} at column {err.colno})", path=path,
                         line=line if line is not None else err.lineno) from None
    except StrictJSONError as err:
        raise InputError(str(err), path=path, line=line) from None
    except RecursionError:
        raise InputError("JSON nested too deeply to read", path=path, line=line) from None


def iter_json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for each non-blank JSON Lines record."""
    for number, text in iter_lines(path):
        if not text.strip():
            continue
        record = loads_json(text, path=path, line=number)
        if not isinstance(record, dict):
            raise InputError(f"expected a JSON object per line, got {type(record).__name__}",
                             path=path, line=number)
        yield number, record


def _type_name(value: Any) -> str:
    return {dict: "object", list: "list", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__)


def get_text(record: dict[str, Any], key: str, *, path: Path | str, line: int,
             required: bool = True, allow_number: bool = False,
             allow_empty: bool = False) -> str | None:
    """A string field of a record, checked.

    Missing or null fields are errors when ``required``; numbers are accepted (and turned
    into strings) only when ``allow_number`` (answers, ids); empty strings only when
    ``allow_empty``. Anything else (lists, objects, booleans) is a type error.
    """
    value = record.get(key)
    if value is None:
        if required:
            what = "is missing" if key not in record else "is null"
            raise InputError(f"required field {what} (record keys: {', '.join(sorted(record))})",
                             path=path, line=line, field=key)
        return None
    if allow_number and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        expected = "a string or number" if allow_number else "a string"
        raise InputError(f"expected {expected}, got {_type_name(value)} {value!r:.60}",
                         path=path, line=line, field=key)
    if not allow_empty and not value.strip():
        raise InputError("field is empty", path=path, line=line, field=key)
    return value


class Collector:
    """Gathers examples from one source and checks them as they arrive.

    Checks: unique ids (the error names both lines), answers inside ``label_set`` when one is
    given, and at the end that the source was not empty and that every label of ``label_set``
    has at least one example.
    """

    def __init__(self, path: Path | str, label_set: Iterable[str] | None = None,
                 unit: str = "line"):
        self.path = path
        self.unit = unit
        self.label_set = None if label_set is None else list(label_set)
        self._allowed = None if label_set is None else set(self.label_set)
        self._seen: dict[str, int] = {}
        self._forms: dict[str, tuple[str, int]] = {}  # NFC name -> (as first written, where)
        self.examples: list[DomainExample] = []

    def add(self, example: DomainExample, line: int, answer_field: str = "answer") -> None:
        self._check_domain(example.domain, line)
        first = self._seen.get(example.id)
        if first is not None:
            raise InputError(f"duplicate id {example.id!r} (first seen at {self.unit} {first})",
                             path=self.path, line=line, field="id")
        if self._allowed is not None and example.answer not in self._allowed:
            shown = ", ".join(self.label_set[:12]) + (" ..." if len(self.label_set) > 12 else "")
            raise InputError(f"label {example.answer!r} is not in the label set ({shown})",
                             path=self.path, line=line, field=answer_field)
        self._seen[example.id] = line
        self.examples.append(example)

    def _check_domain(self, name: str, line: int) -> None:
        """Domain names that print alike must be the same text: no invisible characters, and
        one Unicode form per name (``Café`` composed and decomposed are refused together)."""
        hidden = next((c for c in name if unicodedata.category(c) in _INVISIBLE), None)
        if hidden is not None:
            raise InputError(f"domain name {name[:60]!r} holds an invisible character "
                             f"(U+{ord(hidden):04X} {unicodedata.name(hidden, 'control')}); "
                             "remove it", path=self.path, line=line, field="domain")
        key = unicodedata.normalize("NFC", name)
        spelled, first = self._forms.setdefault(key, (name, line))
        if spelled != name:
            raise InputError(f"domain {name!r} is the same name as {spelled!r} ({self.unit} "
                             f"{first}) written in another Unicode form (NFC/NFD); they print "
                             "alike but would be two domains: write both the same way (e.g. "
                             "normalise the file to NFC)", path=self.path, line=line,
                             field="domain")

    def dataset(self, name: str, what: str = "examples") -> DomainDataset:
        if not self.examples:
            raise InputError(f"no {what} found (empty source)", path=self.path)
        if self.label_set is not None:
            present = {ex.answer for ex in self.examples}
            missing = [lbl for lbl in self.label_set if lbl not in present]
            if missing:
                raise InputError("label set entries with no examples: " + ", ".join(missing),
                                 path=self.path, field="label_set")
        return DomainDataset(self.examples, name=name)
