"""One entry point for every data source: :func:`load_dataset` picks the reader by format
(or detects it) and :func:`load_from_config` builds the training pool of a run.

Formats: ``jsonl``, ``csv`` (field names from a FieldMap), ``r52`` (``label<TAB>text``),
``math`` (MATH tree or ``.tar.gz``), ``recorded`` (BalDistill recorded-teacher JSON Lines),
``hf`` (``save_to_disk`` folder, ``.arrow``, ``.parquet``) and ``builtin``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from domdistill.config import DataConfig, FieldMap
from domdistill.data.example import DomainDataset
from domdistill.data.formats import load_csv, load_hf, load_jsonl, load_label_text, sniff_first_json
from domdistill.data.math import load_math
from domdistill.data.reading import iter_lines
from domdistill.data.recorded import (
    is_recorded_record, load_recorded, normalize_r52_text, r52_match_key,
)
from domdistill.errors import InputError

FORMATS = ("jsonl", "csv", "r52", "math", "recorded", "hf", "builtin")

__all__ = ["FORMATS", "detect_format", "load_dataset", "load_from_config", "load_test_from_config",
           "normalize_r52_text", "r52_match_key"]


def _first_line(path: Path) -> str | None:
    for _, text in iter_lines(path):
        if text.strip():
            return text
    return None


def detect_format(path: str | Path) -> str:
    """The format of ``path``, from its name and, where that is ambiguous, its first line.

    - ``builtin`` -> builtin; a folder with ``dataset_info.json``/``state.json``/
      ``dataset_dict.json`` -> hf; a folder with ``train/``, ``test/`` or ``MATH/`` -> math
    - ``.tar.gz``/``.tgz``/``.tar`` -> math; ``.parquet``/``.arrow`` -> hf; ``.csv[.gz]`` -> csv
    - ``.jsonl[.gz]``/``.json[.gz]`` -> recorded if the first record has a recorded-teacher key
      set, else jsonl
    - anything else (``.txt``, ``.tsv``) whose first line holds a TAB -> r52
    """
    if str(path) == "builtin":
        return "builtin"
    p = Path(path)
    if not p.exists():
        raise InputError("file or folder does not exist", path=p)
    name = p.name.lower()
    if p.is_dir():
        if any((p / f).is_file() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return "hf"
        if any((p / d).is_dir() for d in ("train", "test", "MATH")):
            return "math"
        raise InputError("cannot tell the format of this folder (expected a saved Hugging Face "
                         "dataset or a MATH train/test tree); pass format", path=p)
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return "math"
    if name.endswith((".parquet", ".arrow")):
        return "hf"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
        first = sniff_first_json(p)
        return "recorded" if first is not None and is_recorded_record(first) else "jsonl"
    first_line = _first_line(p)
    if first_line is not None and "\t" in first_line:
        return "r52"
    raise InputError("cannot tell the format from the name or first line; pass format "
                     f"(one of {', '.join(FORMATS)})", path=p)


def _field_map(fields: FieldMap | Mapping[str, Any] | None) -> FieldMap | None:
    if fields is None or isinstance(fields, FieldMap):
        return fields
    return FieldMap.model_validate(dict(fields))


def load_dataset(path: str | Path, format: str = "auto",
                 fields: FieldMap | Mapping[str, Any] | None = None, split: str | None = None,
                 label_set: Iterable[str] | None = None, *, builtin_size: int = 2000,
                 seed: int = 0) -> DomainDataset:
    """Load examples from ``path`` in ``format`` (``"auto"`` detects it).

    ``fields`` names the source fields (jsonl, csv, hf); ``split`` picks a split (math:
    train/test, hf: a DatasetDict split); ``label_set``, when given, makes any answer outside
    it an error, and so is a label of the set with no example. ``builtin_size`` and ``seed``
    only apply to the built-in task.
    """
    fmt = detect_format(path) if format == "auto" else format
    labels = list(label_set) if label_set is not None else None
    fm = _field_map(fields)
    if fmt == "builtin":
        from domdistill.data.builtin import builtin_dataset  # written alongside; import lazily
        return builtin_dataset(size=builtin_size, seed=seed)
    p = Path(path)
    if not p.exists():
        raise InputError("file or folder does not exist", path=p)
    if fmt == "jsonl":
        return load_jsonl(p, fm, labels)
    if fmt == "csv":
        return load_csv(p, fm, labels)
    if fmt == "r52":
        return load_label_text(p, labels)
    if fmt == "math":
        return load_math(p, split, labels)
    if fmt == "recorded":
        return load_recorded(p, labels)
    if fmt == "hf":
        return load_hf(p, fm, split, labels)
    raise InputError(f"unknown format {fmt!r} (expected auto or one of {', '.join(FORMATS)})",
                     path=p, field="format")


def load_from_config(cfg: DataConfig) -> DomainDataset:
    """The training pool of a run: ``cfg.path`` loaded as configured, then resampled
    long-tailed with :func:`~domdistill.data.domains.zipf_resample` when ``cfg.zipf_alpha``
    is set (the built-in task is generated with that exponent instead)."""
    fmt = detect_format(cfg.path) if cfg.format == "auto" else cfg.format
    if fmt == "builtin":
        from domdistill.data.builtin import builtin_dataset
        if cfg.zipf_alpha is not None:
            return builtin_dataset(size=cfg.builtin_size, alpha=cfg.zipf_alpha, seed=cfg.seed)
        return builtin_dataset(size=cfg.builtin_size, seed=cfg.seed)
    pool = load_dataset(cfg.path, cfg.format, cfg.fields, cfg.split, cfg.label_set,
                        builtin_size=cfg.builtin_size, seed=cfg.seed)
    if cfg.zipf_alpha is not None:
        from domdistill.data.domains import zipf_resample
        pool = zipf_resample(pool, cfg.zipf_alpha, seed=cfg.seed, largest=cfg.zipf_largest)
    return pool


def load_test_from_config(cfg: DataConfig) -> DomainDataset | None:
    """The separate test set ``cfg.test_path``, or None when the test set is to be split off
    the pool. A MATH source gives its ``test`` split; any other source is read whole (an HF
    ``DatasetDict`` there must hold a single split)."""
    if cfg.test_path is None:
        return None
    fmt = detect_format(cfg.test_path) if cfg.test_format == "auto" else cfg.test_format
    split = "test" if fmt == "math" else None
    return load_dataset(cfg.test_path, fmt, cfg.fields, split, cfg.label_set,
                        builtin_size=cfg.builtin_size, seed=cfg.seed + 1)
