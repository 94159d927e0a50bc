"""``results.json``: the machine-readable outcome of a run (contract in the architecture spec)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from domdistill.errors import InputError
from domdistill.io import atomic_write_json

REQUIRED_METRIC_BLOCKS = ("per_domain", "macro", "micro", "head", "tail")


def build_results(method: str, metrics: dict[str, Any], *, wall_seconds: float,
                  budget: dict[str, Any] | None = None, history: list[dict[str, Any]] | None = None,
                  dataset: dict[str, Any] | None = None, student: dict[str, Any] | None = None,
                  teacher: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """Assemble the results object; ``budget`` needs ``limit`` and ``spent`` when given."""
    missing = [k for k in REQUIRED_METRIC_BLOCKS if k not in metrics]
    if missing:
        raise ValueError(f"metrics block lacks {missing}")
    out: dict[str, Any] = {"method": method}
    if dataset is not None:
        out["dataset"] = dataset
    if student is not None:
        out["student"] = student
    if teacher is not None:
        out["teacher"] = teacher
    if budget is not None:
        lacking = [k for k in ("limit", "spent") if k not in budget]
        if lacking:
            raise ValueError(f"budget block lacks {lacking}")
        out["budget"] = {"by_domain": {}, "by_stage": [], **budget}
    out["metrics"] = metrics
    out["history"] = list(history or [])
    out["wall_seconds"] = round(float(wall_seconds), 3)
    out.update(extra)
    return out


def teacher_warnings(budget: dict[str, Any] | None, top_logprobs: int | None = None) -> list[str]:
    """What went wrong with the teacher calls of a finished run, in words (empty: nothing)."""
    if not budget:
        return []
    out = []
    failed, maybe = budget.get("failed", 0), budget.get("possibly_billed", 0)
    if failed:
        out.append(f"{failed} teacher call(s) failed and are missing from the training set "
                   f"({maybe} possibly billed and charged, {failed - maybe} not charged)")
    if budget.get("unusable"):
        out.append(f"{budget['unusable']} teacher repl(ies) were delivered and charged but could "
                   "not be used (empty or unparseable)")
    if budget.get("in_flight"):
        out.append(f"{budget['in_flight']} teacher call(s) are still recorded in flight")
    if top_logprobs and budget.get("missing_logprobs"):
        out.append(f"teacher.top_logprobs = {top_logprobs} was set but {budget['missing_logprobs']} "
                   "replies came without log-probabilities (the server ignores the parameter); "
                   "none were stored for them")
    return out


def calls_summary(budget: dict[str, Any] | None, with_limit: bool = False) -> str:
    """Charged calls ("98" or "98 / 100"), with the failed, possibly billed and unusable ones
    beside them when there are any: "98 (5 failed, 1 possibly billed)"."""
    if not budget or "spent" not in budget:
        return "-"
    text = f"{budget['spent']} / {budget['limit']}" if with_limit else str(budget["spent"])
    notes = [f"{budget[k]} {k.replace('_', ' ')}" for k in ("failed", "possibly_billed", "unusable")
             if budget.get(k)]
    return f"{text} ({', '.join(notes)})" if notes else text


def write_results(path: str | Path, method: str, metrics: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Build and atomically write ``results.json``; returns what was written."""
    results = build_results(method, metrics, **kwargs)
    atomic_write_json(path, results)
    return results


def read_results(path: str | Path) -> dict[str, Any]:
    """Load a ``results.json`` and check it has the contract's fields."""
    p = Path(path)
    if not p.is_file():
        raise InputError("results file does not exist", path=p)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON: {e.msg}", path=p, line=e.lineno) from None
    except (UnicodeDecodeError, RecursionError) as e:
        raise InputError(f"not a results file ({type(e).__name__})", path=p) from None
    _expect(data, dict, p, "(top level)")
    for key in ("method", "metrics", "wall_seconds"):
        if key not in data:
            raise InputError("missing required key", path=p, field=key)
    _expect(data["method"], str, p, "method")
    _expect(data["wall_seconds"], (int, float), p, "wall_seconds")
    _expect(data["metrics"], dict, p, "metrics")
    for key in REQUIRED_METRIC_BLOCKS:
        if key not in data["metrics"]:
            raise InputError("missing required key", path=p, field=f"metrics.{key}")
        _expect(data["metrics"][key], dict, p, f"metrics.{key}")
    blocks = {f"metrics.{k}": data["metrics"][k] for k in REQUIRED_METRIC_BLOCKS if k != "per_domain"}
    for domain, block in data["metrics"]["per_domain"].items():
        blocks[f"metrics.per_domain.{domain}"] = _expect(block, dict, p, f"metrics.per_domain.{domain}")
    for where, block in blocks.items():
        for name, value in block.items():
            _expect(value, (int, float, list, str, type(None)), p, f"{where}.{name}")
    for key, kind in (("budget", (dict, type(None))), ("history", list), ("dataset", dict),
                      ("head_domains", list), ("tail_domains", list), ("warnings", list)):
        if key in data:
            _expect(data[key], kind, p, key)
    return data


def _expect(value: Any, kind: type | tuple[type, ...], path: Path, field: str) -> Any:
    """``value`` if it has the type the results contract gives ``field``, else an InputError."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        names = " or ".join({dict: "an object", list: "a list", str: "a string", int: "a number",
                             float: "a number", type(None): "null"}[k] for k in kinds)
        raise InputError(f"expected {names}, got {type(value).__name__} {str(value)[:40]!r}",
                         path=path, field=field)
    return value
