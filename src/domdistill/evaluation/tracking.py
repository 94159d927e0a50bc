"""Experiment tracking: scalars to TensorBoard (and Weights & Biases when asked).

``OutputConfig.tracking`` picks the back-ends: unset means TensorBoard when it is installed
(``pip install 'domdistill[tracking]'``), ``[]`` means none, and a back-end named explicitly must be
installed. Events go to ``RUN_DIR/logs/tensorboard``; view them with
``tensorboard --logdir RUN_DIR/logs``.

Methods call :meth:`Tracker.log_stage` (BalDistill, after each stage), :meth:`Tracker.log_interval`
(DDK, after each re-weighting interval), :meth:`Tracker.log` (final metrics) and
:meth:`Tracker.close`; ``training.sft.LogToTracker`` forwards the Trainer's step logs (DDK).
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from domdistill.errors import ConfigError

BACKENDS = ("tensorboard", "wandb")


def available(backend: str) -> bool:
    """Whether the package behind a tracking back-end is installed."""
    return importlib.util.find_spec(backend) is not None


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested dicts of numbers -> ``{"a/b/c": value}``; non-numeric and non-finite leaves dropped."""
    out: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def metric_scalars(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The loggable part of a ``metrics`` block: aggregates and per-domain scores (no lists)."""
    out: dict[str, Any] = {b: metrics[b] for b in ("macro", "micro", "head", "tail") if b in metrics}
    out["domain"] = {d: {k: v for k, v in m.items() if k != "n"}
                     for d, m in metrics.get("per_domain", {}).items()}
    return out


class Tracker:
    """Writes scalars to the configured trackers; does nothing when none is active."""

    def __init__(self, run_dir: str | Path, backends: Sequence[str] | None = None,
                 config: Mapping[str, Any] | None = None, name: str | None = None):
        self.run_dir = Path(run_dir)
        if backends is None:  # the default: TensorBoard if it is there
            backends = ["tensorboard"] if available("tensorboard") else []
        unknown = [b for b in backends if b not in BACKENDS]
        if unknown:
            raise ConfigError(f"unknown tracker {unknown[0]!r} (expected one of {', '.join(BACKENDS)})",
                              field="output.tracking")
        missing = [b for b in backends if not available(b)]
        if missing:
            raise ConfigError(f"tracker {missing[0]!r} is not installed: pip install {missing[0]} "
                              "(or pip install 'domdistill[tracking]')", field="output.tracking")
        self.backends = list(backends)
        self._tb = None
        self._wandb = None
        if "tensorboard" in self.backends:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.tensorboard_dir))
        if "wandb" in self.backends:
            import wandb

            self._wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "domdistill"),
                                     name=name or self.run_dir.name, dir=str(self.run_dir / "logs"),
                                     config=dict(config or {}), reinit=True)

    @classmethod
    def from_config(cls, cfg: Any, run_dir: str | Path) -> "Tracker":
        """A tracker for a ``RunConfig`` (back-ends from ``cfg.output.tracking``)."""
        return cls(run_dir, cfg.output.tracking, config=cfg.redacted(),
                   name=f"{cfg.method.name}:{Path(run_dir).name}")

    @property
    def tensorboard_dir(self) -> Path:
        return self.run_dir / "logs" / "tensorboard"

    @property
    def active(self) -> bool:
        return self._tb is not None or self._wandb is not None

    # -- generic ------------------------------------------------------------------------------
    def log(self, values: Mapping[str, Any], step: int) -> None:
        """Log nested numbers as ``group/name`` scalars at ``step``."""
        if not self.active:
            return
        flat = flatten(values)
        if self._tb is not None:
            for tag, value in flat.items():
                self._tb.add_scalar(tag, value, global_step=step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log(flat, step=step)

    def log_curve(self, tag: str, points: Sequence[Sequence[float]]) -> None:
        """A whole curve of ``[step, value]`` points under one tag (e.g. a stage's training loss)."""
        if not self.active:
            return
        for step, value in points:
            if self._tb is not None:
                self._tb.add_scalar(tag, float(value), global_step=int(step))
        if self._tb is not None:
            self._tb.flush()
        if self._wandb is not None:  # wandb steps must increase: log the curve as a table
            import wandb

            table = wandb.Table(data=[[int(s), float(v)] for s, v in points], columns=["step", tag])
            self._wandb.log({tag: wandb.plot.line(table, "step", tag, title=tag)})

    # -- what the methods log -----------------------------------------------------------------
    def log_stage(self, stage: int, record: Mapping[str, Any]) -> None:
        """BalDistill: one stage's evaluation, quotas and teacher spend (``state.json`` record)."""
        values: dict[str, Any] = {"eval": metric_scalars(record.get("metrics", {}))}
        plan = record.get("plan", {})
        values["quota"] = plan.get("quotas", {})
        spend = record.get("spend", {})
        values["spend"] = {k: v for k, v in spend.items() if not isinstance(v, Mapping)}
        values["data"] = {"examples": record.get("examples"), "train_size": record.get("train_size")}
        self.log(values, step=stage)
        if record.get("training"):
            self.log_curve(f"train/loss_stage_{stage}", _loss_points(record["training"]))

    def log_interval(self, step: int, weights: Mapping[str, float],
                     student_ppl: Mapping[str, float] | None = None,
                     teacher_ppl: Mapping[str, float] | None = None,
                     loss: float | None = None) -> None:
        """DDK: domain weights and student/teacher perplexity (and their ratio) at a step."""
        values: dict[str, Any] = {"weight": dict(weights)}
        if student_ppl:
            values["student_ppl"] = dict(student_ppl)
        if teacher_ppl:
            values["teacher_ppl"] = dict(teacher_ppl)
        if student_ppl and teacher_ppl:
            values["ppl_ratio"] = {d: student_ppl[d] / teacher_ppl[d] for d in student_ppl
                                   if teacher_ppl.get(d)}
        if loss is not None:
            values["train"] = {"loss": loss}
        self.log(values, step=step)

    def log_budget(self, budget: Mapping[str, Any], step: int) -> None:
        """Teacher calls spent in total and by domain."""
        self.log({"budget": {"spent": budget.get("spent"), "limit": budget.get("limit"),
                             "domain": budget.get("by_domain", {})}}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _loss_points(training: Any) -> list[tuple[int, float]]:
    """Loss points from what training returns: ``[[step, loss], ...]`` or ``{"loss": [...]}``."""
    if isinstance(training, Mapping):
        training = training.get("loss", training.get("losses", []))
    points = []
    for i, p in enumerate(training or []):
        if isinstance(p, Mapping):
            points.append((int(p.get("step", i)), float(p["loss"])))
        elif isinstance(p, (list, tuple)):
            points.append((int(p[0]), float(p[1])))
        else:
            points.append((i, float(p)))
    return points
