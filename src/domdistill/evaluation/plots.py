"""Report figures (matplotlib, Agg canvas; no pyplot state), each saved as a PNG.

Every function takes the loaded runs (``report.Run``) and a path, draws one figure, and returns
the path, or ``None`` when no run has the data that figure needs. Figures grow with the number of
domains, so 52 domain labels never overlap.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from domdistill.io import atomic_write_bytes

if TYPE_CHECKING:
    from domdistill.evaluation.report import Run

HEAD, TAIL = "#1f77b4", "#d62728"
DPI = 110
ROW_INCHES = 0.2  # height of one domain row in the by-domain charts


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _grid(fig: Figure, n: int, ncols: int = 2, **kw: Any) -> list[Any]:
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return list(axes[:n])


def domain_scores(runs: Sequence["Run"], metric: str, path: Path) -> Path | None:
    """Per-domain score against domain size in the pool (log x); head and tail marked."""
    runs = [r for r in runs if r.per_domain]
    if not runs:
        return None
    ncols = min(2, len(runs))
    fig = _figure(5.6 * ncols, 4.2 * math.ceil(len(runs) / ncols))
    axes = _grid(fig, len(runs), ncols, sharey=True)
    for ax, run in zip(axes, runs):
        counts, head = run.domain_counts, set(run.head_domains)
        doms = [d for d in run.per_domain if metric in run.per_domain[d] and counts.get(d, 0) > 0]
        for group, color, marker in (("head", HEAD, "o"), ("tail", TAIL, "^")):
            ds = [d for d in doms if (d in head) == (group == "head")]
            if not ds:
                continue
            xs = [counts[d] for d in ds]
            ys = [run.per_domain[d][metric] for d in ds]
            ax.scatter(xs, ys, c=color, marker=marker, s=28, alpha=0.85, label=f"{group} ({len(ds)})")
            mean = sum(ys) / len(ys)
            ax.plot([min(xs), max(xs)], [mean, mean], color=color, ls=":", lw=1.5,
                    label=f"{group} mean {mean:.3f}")
            _label_extremes(ax, ds, xs, ys)
        _log_x(ax)
        ax.margins(y=0.12)
        ax.set_xlabel("domain size in the training pool (examples, log scale)")
        ax.set_ylabel(f"{metric} on the domain's test set" + (" (lower is better)" if metric == "perplexity" else ""))
        ax.set_title(f"{run.label}: per-domain {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"Per-domain {metric} vs domain frequency", fontweight="bold")
    return _save(fig, path)


def _log_x(ax: Any) -> None:
    """Log x axis with plain-number labels at 1-2-5 steps and no crowded minor labels."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _label_extremes(ax: Any, names: list[str], xs: list[float], ys: list[float]) -> None:
    """Name the best and the worst domain of a group (only when it is unique), nothing else."""
    for pick, dy in ((max(ys), 7), (min(ys), -12)):
        hits = [i for i, y in enumerate(ys) if y == pick]
        if len(hits) == 1 and len(ys) > 1:
            i = hits[0]
            ax.annotate(names[i], (xs[i], ys[i]), xytext=(0, dy), textcoords="offset points",
                        ha="center", fontsize=7)


def budget(runs: Sequence["Run"], path: Path) -> Path | None:
    """Teacher calls charged per domain, stacked by stage; one panel per run that called a teacher."""
    runs = [r for r in runs if r.spend_by_domain_stage]
    if not runs:
        return None
    domains = _domain_order(runs)
    stages = sorted({s for r in runs for row in r.spend_by_domain_stage.values() for s in row})
    fig = _figure(max(6.0, 4.4 * len(runs)), max(3.0, 1.6 + ROW_INCHES * len(domains)))
    axes = _grid(fig, len(runs), ncols=len(runs), sharey=True)
    cmap = colormaps["viridis"]
    ys = list(range(len(domains)))
    for ax, run in zip(axes, runs):
        left = [0.0] * len(domains)
        for k, stage in enumerate(stages):
            vals = [run.spend_by_domain_stage.get(d, {}).get(stage, 0) for d in domains]
            if not any(vals):
                continue
            ax.barh(ys, vals, left=left, height=0.75, label=f"stage {stage}",
                    color=cmap(k / max(len(stages) - 1, 1) * 0.85))
            left = [a + b for a, b in zip(left, vals)]
        limit = run.budget.get("limit")
        spent = run.budget.get("spent", sum(left))
        ax.set_title(f"{run.label}: {spent}" + (f" of {limit}" if limit else "") + " calls")
        ax.set_xlabel("teacher calls charged")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right", title="stage" if len(stages) > 1 else None)
    axes[0].set_yticks(ys, [_tag(d, runs[0]) for d in domains], fontsize=7 if len(domains) > 20 else 9)
    axes[0].set_ylim(len(domains) - 0.5, -0.5)  # largest domain on top, no empty margins
    axes[0].set_ylabel("domain (largest pool first; * = tail)")
    fig.suptitle("Teacher budget spent by domain and stage", fontweight="bold")
    return _save(fig, path)


STAGE_MARKERS = ("o", "s", "^", "D", "v", "P")


def stage_curves(runs: Sequence["Run"], metric: str, path: Path) -> Path | None:
    """Macro, head and tail score after each stage, against teacher calls spent so far."""
    runs = [r for r in runs if r.stage_history]
    if not runs:
        return None
    fig = _figure(13, 4)
    axes = fig.subplots(1, 3, sharey=True)
    by_calls = all(len(r.budget.get("by_stage", [])) == len(r.stage_history) for r in runs)
    for ax, (block, title) in zip(axes, (("macro", "macro (mean over domains)"),
                                         ("head_metrics", "head domains"),
                                         ("tail_metrics", "tail domains"))):
        for k, run in enumerate(runs):
            if by_calls:
                xs, total = [], 0
                for spent in run.budget["by_stage"]:
                    total += spent
                    xs.append(total)
            else:
                xs = [h["stage"] for h in run.stage_history]
            ys = [h.get(block, {}).get(metric, float("nan")) for h in run.stage_history]
            # hollow markers of shrinking size and their own shape: tied runs stay visible
            ax.plot(xs, ys, marker=STAGE_MARKERS[k % len(STAGE_MARKERS)], markersize=max(4, 10 - 2 * k),
                    markerfacecolor="none", markeredgewidth=1.5, color=f"C{k}", label=run.label)
        ax.set_title(title)
        ax.set_xlabel("teacher calls spent so far" if by_calls else "stage")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(metric)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{metric} after each stage", fontweight="bold")
    return _save(fig, path)


def ddk_training(runs: Sequence["Run"], path: Path) -> Path | None:
    """DDK: domain weights and student/teacher perplexity ratio per domain over training
    (heatmaps; one colour scale per column, shared by the runs so they compare)."""
    runs = [r for r in runs if r.interval_history]
    if not runs:
        return None
    domains = _domain_order(runs)
    grids = [([[h.get("weights", {}).get(d, math.nan) for h in r.interval_history] for d in domains],
              [[_ratio(h, d) for h in r.interval_history] for d in domains]) for r in runs]
    norms = [_norm([g[k] for g in grids], log=k == 1) for k in (0, 1)]
    fig = _figure(12, len(runs) * max(3.0, 1.6 + ROW_INCHES * len(domains)))
    axes = fig.subplots(len(runs), 2, squeeze=False)
    for row, run, pair in zip(axes, runs, grids):
        steps = [h.get("step", i) for i, h in enumerate(run.interval_history)]
        for ax, grid, norm, title, cmap in zip(row, pair, norms, ("domain weight", "student / teacher perplexity"),
                                               ("viridis", "magma")):
            if norm is None or all(math.isnan(v) for line in grid for v in line):
                ax.set_axis_off()
                ax.text(0.5, 0.5, f"{run.label}: no {title} recorded", ha="center", transform=ax.transAxes)
                continue
            im = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap=cmap, norm=norm)
            log = isinstance(norm, LogNorm)
            fig.colorbar(im, ax=ax, shrink=0.8, label=title + (" (log scale)" if log else ""))
            ax.set_title(f"{run.label}: {title}")
            ax.set_xlabel("training step")
            idx = _ticks(len(steps))
            ax.set_xticks(idx, [str(steps[i]) for i in idx])
            ax.set_yticks(range(len(domains)), domains, fontsize=7 if len(domains) > 20 else 9)
    fig.suptitle("DDK: domain weights and perplexity gap over training", fontweight="bold")
    return _save(fig, path)


def domain_weight_lines(history: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """One DDK run's domain sampling weights over training, one step line per domain."""
    fig = _figure(7, 4)
    ax = fig.subplots()
    steps = [h["step"] for h in history]
    domains = list(history[0]["weights"])
    colors = colormaps["tab20" if len(domains) > 10 else "tab10"]
    for i, d in enumerate(domains):
        ax.step(steps, [h["weights"][d] for h in history], where="post", label=d,
                color=colors(i % colors.N))
    ax.set_xlabel("optimizer step (weights apply from this step on)")
    ax.set_ylabel("domain sampling weight")
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def _norm(grids: list[list[list[float]]], log: bool) -> Normalize | None:
    """A colour scale over all finite values; log when they span more than 10x (the first
    interval's perplexity gap can be 100 times the last)."""
    vals = [v for g in grids for line in g for v in line if not math.isnan(v)]
    if not vals:
        return None
    lo, hi = min(vals), max(vals)
    if log and lo > 0 and hi > 10 * lo:
        return LogNorm(vmin=lo, vmax=hi)
    return Normalize(vmin=lo, vmax=hi)


def loss_curves(runs: Sequence["Run"], path: Path) -> Path | None:
    """Training loss per run; BalDistill stages placed end to end, boundaries dashed."""
    runs = [r for r in runs if r.loss_segments]
    if not runs:
        return None
    ncols = min(2, len(runs))
    fig = _figure(5.6 * ncols, 3.8 * math.ceil(len(runs) / ncols))
    axes = _grid(fig, len(runs), ncols)
    for ax, run in zip(axes, runs):
        offset = 0
        segments = run.loss_segments
        for k, (name, points) in enumerate(segments):
            if not points:
                continue
            xs = [offset + s for s, _ in points]
            ax.plot(xs, [v for _, v in points], color=f"C{k % 10}", lw=1.2, label=name)
            if len(segments) > 1:
                ax.axvline(offset, color="grey", ls="--", lw=0.8)
            offset = xs[-1]
        ax.set_title(f"{run.label}: training loss")
        ax.set_xlabel("optimizer step" + (" (stages end to end)" if len(segments) > 1 else ""))
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        if 1 < len(segments) <= 10:
            ax.legend(fontsize=8)
    fig.suptitle("Training loss", fontweight="bold")
    return _save(fig, path)


def _domain_order(runs: Sequence["Run"]) -> list[str]:
    """Domains by pool size (largest first), over all runs."""
    counts: dict[str, int] = {}
    for r in runs:
        for d in list(r.domain_counts) + list(r.per_domain):
            counts[d] = max(counts.get(d, 0), r.domain_counts.get(d, 0))
    return sorted(counts, key=lambda d: (-counts[d], d))


def _tag(domain: str, run: "Run") -> str:
    return f"{domain} *" if domain in set(run.tail_domains) else domain


def _ratio(entry: dict[str, Any], domain: str) -> float:
    if (entry.get("ratio") or {}).get(domain) is not None:
        return float(entry["ratio"][domain])
    s = (entry.get("student_ppl") or {}).get(domain)
    t = (entry.get("teacher_ppl") or {}).get(domain)
    return s / t if s is not None and t else float("nan")


def _ticks(n: int, most: int = 8) -> list[int]:
    step = max(1, math.ceil(n / most))
    return list(range(0, n, step))
