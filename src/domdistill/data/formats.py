"""Readers for the generic formats: JSON Lines, CSV, ``label<TAB>text`` (R52/R8) and
Hugging Face datasets (``save_to_disk`` folders, Arrow and Parquet files).

Each reader streams its source once and returns a :class:`DomainDataset`; field names come
from a :class:`~domdistill.config.FieldMap`.
"""

from __future__ import annotations

import csv
from contextlib import closing
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from domdistill.config import FieldMap
from domdistill.data.example import DomainDataset, DomainExample
from domdistill.data.reading import Collector, get_text, iter_json_lines, iter_lines, source_stem
from domdistill.errors import InputError

csv.field_size_limit(1 << 28)


def record_to_example(record: dict[str, Any], fields: FieldMap, *, path: Path | str, line: int,
                      stem: str, metadata: dict[str, Any] | None = None) -> DomainExample:
    """Map one record (JSON object, CSV row, dataset row) to an example through ``fields``.

    Keys not named by the field map are kept in ``metadata``.
    """
    kw = dict(path=path, line=line)
    ex_id = get_text(record, fields.id, allow_number=True, **kw) if fields.id else None
    used = {f for f in (fields.id, fields.domain, fields.input, fields.answer, fields.rationale) if f}
    extra = {k: v for k, v in record.items() if k not in used}
    return DomainExample(
        id=ex_id or f"{stem}-{line}",
        domain=get_text(record, fields.domain, **kw).strip(),
        input=get_text(record, fields.input, **kw),
        answer=get_text(record, fields.answer, allow_number=True, **kw).strip(),
        rationale=get_text(record, fields.rationale, required=False, allow_empty=True, **kw)
        if fields.rationale else None,
        metadata={**extra, **(metadata or {})},
    )


def load_jsonl(path: str | Path, fields: FieldMap | None = None,
               label_set: Iterable[str] | None = None) -> DomainDataset:
    """JSON Lines (optionally ``.gz``), one object a line, fields named by ``fields``."""
    path, fields = Path(path), fields or FieldMap()
    stem, out = source_stem(path), Collector(path, label_set)
    for line, record in iter_json_lines(path):
        out.add(record_to_example(record, fields, path=path, line=line, stem=stem), line,
                fields.answer)
    return out.dataset(stem)


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """CSV rows with the line on which each row starts (quoted fields may span lines)."""
    lines = (text + "\n" for _, text in iter_lines(path))
    reader = csv.reader(lines)
    start = 1
    try:
        for row in reader:
            yield start, row
            start = reader.line_num + 1
    except csv.Error as err:
        raise InputError(f"malformed CSV: {err}", path=path, line=reader.line_num) from None


def load_csv(path: str | Path, fields: FieldMap | None = None,
             label_set: Iterable[str] | None = None) -> DomainDataset:
    """CSV with a header row (optionally ``.gz``); columns named by ``fields``."""
    path, fields = Path(path), fields or FieldMap()
    stem, out = source_stem(path), Collector(path, label_set)
    rows = _csv_rows(path)
    header = next(rows, (1, None))[1]
    if not header:
        raise InputError("no examples found (empty source)", path=path)
    for name in (fields.id, fields.domain, fields.input, fields.answer, fields.rationale):
        if name and name not in header:
            raise InputError(f"column missing from the header (columns: {', '.join(header)})",
                             path=path, line=1, field=name)
    for line, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise InputError(f"expected {len(header)} columns as in the header, got {len(row)}",
                             path=path, line=line)
        record = dict(zip(header, row))
        if fields.rationale and not record[fields.rationale].strip():
            record[fields.rationale] = None
        out.add(record_to_example(record, fields, path=path, line=line, stem=stem), line,
                fields.answer)
    return out.dataset(stem)


def load_label_text(path: str | Path, label_set: Iterable[str] | None = None) -> DomainDataset:
    """``label<TAB>text`` lines (R52, R8 and similar): domain = answer = label."""
    path = Path(path)
    stem, out = source_stem(path), Collector(path, label_set)
    for line, text in iter_lines(path):
        if not text.strip():
            continue
        label, tab, body = text.partition("\t")
        if not tab:
            raise InputError("expected 'label<TAB>text', found no TAB", path=path, line=line)
        label = label.strip()
        if not label:
            raise InputError("empty label before the TAB", path=path, line=line, field="label")
        if not body.strip():
            raise InputError("empty text after the TAB", path=path, line=line, field="text")
        out.add(DomainExample(id=f"{stem}-{line}", domain=label, input=body.strip(),
                              answer=label), line, "label")
    return out.dataset(stem)


# ---- Hugging Face datasets / Arrow / Parquet ------------------------------------------------

def _rows_of_saved(path: Path, split: str | None) -> tuple[Iterable[dict[str, Any]], str]:
    """Rows of a ``save_to_disk`` folder (a Dataset, or one split of a DatasetDict)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as err:
        raise InputError(f"not a readable saved Hugging Face dataset: {err}", path=path) from None
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            if len(ds) != 1:
                raise InputError(f"dataset has splits {', '.join(ds)}: choose one with split",
                                 path=path, field="split")
            split = next(iter(ds))
        if split not in ds:
            raise InputError(f"no split {split!r} (splits: {', '.join(ds)})", path=path,
                             field="split")
        return ds[split], split
    return ds, split or ""


def _rows_of_file(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of an Arrow (IPC stream or file) or Parquet file, read batch by batch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if path.name.lower().endswith(".parquet"):
            batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        else:
            with path.open("rb") as f:
                head = f.read(6)
            reader = pa.ipc.open_file(path) if head == b"ARROW1" else pa.ipc.open_stream(path)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches)) \
                if head == b"ARROW1" else iter(reader)
        for batch in batches:
            yield from batch.to_pylist()
    except (pa.ArrowInvalid, OSError) as err:
        raise InputError(f"not a readable Arrow/Parquet file: {err}", path=path) from None


def load_hf(path: str | Path, fields: FieldMap | None = None, split: str | None = None,
            label_set: Iterable[str] | None = None) -> DomainDataset:
    """A dataset written by ``datasets`` ``save_to_disk``, or an ``.arrow``/``.parquet`` file.

    Line numbers in errors are 1-based row numbers.
    """
    path, fields = Path(path), fields or FieldMap()
    if not path.exists():
        raise InputError("file or folder does not exist", path=path)
    if path.is_dir():
        rows, split_name = _rows_of_saved(path, split)
        stem = f"{path.name}-{split_name}" if split_name else path.name
    else:
        rows, stem = _rows_of_file(path), source_stem(path)
    out = Collector(path, label_set, unit="row")
    for row_number, record in enumerate(rows, start=1):
        out.add(record_to_example(record, fields, path=path, line=row_number, stem=stem),
                row_number, fields.answer)
    return out.dataset(stem, what="rows")


def sniff_first_json(path: Path) -> dict[str, Any] | None:
    """The first JSON object of a JSON Lines file, or None if it has none (peeks only)."""
    with closing(iter_json_lines(path)) as records:
        for _, record in records:
            return record
    return None


__all__ = ["load_csv", "load_hf", "load_jsonl", "load_label_text", "record_to_example",
           "sniff_first_json"]
