"""The MATH benchmark (Hendrycks et al.): a ``{train,test}/<subject>/<n>.json`` tree, as a
folder or a ``.tar.gz`` read once as a stream.

Each example: domain = subject folder name (``algebra``, ``counting_and_probability``, ...),
input = problem, answer = content of the last ``\\boxed`` of the solution, rationale =
solution, id = ``<split>/<subject>/<n>.json`` (the form MATH-500 uses in ``unique_id``),
metadata ``level``, ``type`` and ``split``.

Two training solutions (``number_theory/7115`` and ``7117``) box nothing (``\\boxed{}``);
they load with an empty answer, so that the tree loads whole with its published counts.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from domdistill.data.example import DomainDataset, DomainExample
from domdistill.data.reading import Collector, get_text, loads_json
from domdistill.errors import InputError
from domdistill.evaluation.answers import last_boxed

SPLITS = ("train", "test")
# display name (the "type" field, the BalDistill "source" field) -> subject folder name
MATH_SUBJECTS = {
    "Algebra": "algebra", "Counting & Probability": "counting_and_probability",
    "Geometry": "geometry", "Intermediate Algebra": "intermediate_algebra",
    "Number Theory": "number_theory", "Prealgebra": "prealgebra", "Precalculus": "precalculus",
}
_BARE_BOXED = re.compile(r"\\boxed\s+([^\s$]+)")


def math_subject_key(name: str) -> str:
    """``"Counting & Probability"`` -> ``"counting_and_probability"``; other names unchanged."""
    return MATH_SUBJECTS.get(name.strip(), name.strip())


def boxed_answer(solution: str) -> str | None:
    """The final answer of a MATH solution: the last ``\\boxed{...}``; also the brace-less
    ``\\boxed 2`` form that two training solutions use."""
    start = solution.rfind("\\boxed")
    if start < 0:
        return None
    rest = solution[start + len("\\boxed"):].lstrip()
    if rest.startswith("{"):
        return last_boxed(solution)
    m = _BARE_BOXED.match(solution, start)
    return m.group(1).rstrip(".") if m else None


def _member_key(name: str) -> tuple[str, str, str] | None:
    """``(split, subject, file)`` for ``[.../]<split>/<subject>/<n>.json``, else None."""
    parts = PurePosixPath(name).parts
    if len(parts) < 3 or not parts[-1].endswith(".json") or parts[-1].startswith("."):
        return None
    split, subject, file = parts[-3:]
    return (split, subject, file) if split in SPLITS else None


def _sort_key(ex: DomainExample) -> tuple[str, str, int, str]:
    split, subject, file = ex.id.split("/")
    stem = file.removesuffix(".json")
    return split, subject, int(stem) if stem.isdigit() else -1, stem


def _example(raw: bytes, key: tuple[str, str, str], where: str) -> DomainExample:
    split, subject, file = key
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"not valid UTF-8 text ({err.reason}) at byte offset {err.start}",
                         path=where) from None
    record = loads_json(text, path=where)
    if not isinstance(record, dict):
        raise InputError("expected a JSON object", path=where)
    kw = dict(path=where, line=1)
    problem = get_text(record, "problem", **kw)
    solution = get_text(record, "solution", **kw)
    answer = boxed_answer(solution)
    if answer is None:
        raise InputError("solution has no \\boxed{} final answer", path=where, field="solution")
    meta = {"level": get_text(record, "level", required=False, **kw),
            "type": get_text(record, "type", required=False, **kw), "split": split}
    return DomainExample(id=f"{split}/{subject}/{file}", domain=subject, input=problem,
                         answer=answer, rationale=solution, metadata=meta)


def _iter_tar(path: Path, split: str | None) -> Iterator[DomainExample]:
    try:
        with tarfile.open(path, mode="r|*") as tar:  # one sequential pass over the archive
            for member in tar:
                key = _member_key(member.name) if member.isfile() else None
                if key is None or (split is not None and key[0] != split):
                    continue
                handle = tar.extractfile(member)
                assert handle is not None
                yield _example(handle.read(), key, f"{path}!{member.name}")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise InputError(f"cannot read the archive: {err}", path=path) from None


def _iter_folder(root: Path, split: str | None) -> Iterator[DomainExample]:
    base = root / "MATH" if (root / "MATH").is_dir() and not (root / "train").is_dir() else root
    for split_dir in sorted(p for p in base.iterdir() if p.is_dir() and p.name in SPLITS):
        if split is not None and split_dir.name != split:
            continue
        for file in sorted(split_dir.glob("*/*.json")):
            key = (split_dir.name, file.parent.name, file.name)
            yield _example(file.read_bytes(), key, str(file))


def load_math(path: str | Path, split: str | None = None,
              label_set: Iterable[str] | None = None) -> DomainDataset:
    """The MATH tree at ``path`` (folder or ``.tar.gz``); ``split`` picks train or test
    (default both). Examples come ordered by split, subject and problem number."""
    path = Path(path)
    if not path.exists():
        raise InputError("file or folder does not exist", path=path)
    if split is not None and split not in SPLITS:
        raise InputError(f"MATH has splits {', '.join(SPLITS)}, not {split!r}", path=path,
                         field="split")
    items = _iter_folder(path, split) if path.is_dir() else _iter_tar(path, split)
    out = Collector(path, label_set, unit="member")
    for number, ex in enumerate(items, start=1):
        out.add(ex, number)
    if not out.examples:
        raise InputError(f"no MATH problems found (expected <split>/<subject>/<n>.json"
                         f"{f' for split {split!r}' if split else ''})", path=path)
    out.examples.sort(key=_sort_key)
    name = "MATH" + (f"-{split}" if split else "")
    return out.dataset(name)
