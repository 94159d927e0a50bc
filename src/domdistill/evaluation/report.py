"""Comparison report over run folders: ``report.md``, a self-contained ``report.html``, PNG plots.

``write_report(run_dirs, out)`` reads each folder's ``results.json`` (and its ``ledger.sqlite`` for
spend by domain and stage), draws the figures of :mod:`domdistill.evaluation.plots`, and writes

- ``OUT/report_plots/*.png`` (the folder is built aside and renamed into place),
- ``OUT/report.md`` (links the PNGs), ``OUT/report.html`` (PNGs embedded as base64).

Nothing is written when an input is bad: every run is read and every figure drawn first.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domdistill.errors import InputError
from domdistill.evaluation import plots
from domdistill.evaluation.results import calls_summary, read_results
from domdistill.io import atomic_dir, atomic_write_text

PLOTS_DIR = "report_plots"
SCORE_METRICS = ("accuracy", "f1", "exact_match", "token_f1", "perplexity")


@dataclass
class Run:
    """One run folder's results, in the shapes the report needs."""

    path: Path
    results: dict[str, Any]
    label: str = ""
    spend_by_domain_stage: dict[str, dict[int, int]] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return str(self.results["method"])

    @property
    def metrics(self) -> dict[str, Any]:
        return self.results["metrics"]

    @property
    def per_domain(self) -> dict[str, dict[str, Any]]:
        return self.metrics.get("per_domain", {})

    @property
    def budget(self) -> dict[str, Any]:
        return self.results.get("budget") or {}

    @property
    def domain_counts(self) -> dict[str, int]:
        """Domain sizes in the training pool (else the evaluated counts)."""
        ds = self.results.get("dataset") or {}
        counts = ds.get("domain_counts") or ds.get("counts")
        return dict(counts) if counts else {d: int(m.get("n", 0)) for d, m in self.per_domain.items()}

    @property
    def head_domains(self) -> list[str]:
        return list(self.results.get("head_domains") or self.metrics.get("head", {}).get("domains", []))

    @property
    def tail_domains(self) -> list[str]:
        return list(self.results.get("tail_domains") or self.metrics.get("tail", {}).get("domains", []))

    @property
    def stage_history(self) -> list[dict[str, Any]]:
        """BalDistill: one entry per stage."""
        return [h for h in self.results.get("history", []) if isinstance(h, dict) and "stage" in h]

    @property
    def interval_history(self) -> list[dict[str, Any]]:
        """DDK: one entry per re-weighting interval."""
        return [h for h in self.results.get("history", []) if isinstance(h, dict) and "weights" in h]

    @property
    def loss_segments(self) -> list[tuple[str, list[tuple[float, float]]]]:
        """Training loss as named ``(step, loss)`` curves: one per stage, or one over intervals."""
        segs = [(f"stage {h['stage']}", _points(h["loss"])) for h in self.stage_history
                if isinstance(h.get("loss"), list) and h["loss"]]
        if segs:
            return segs
        logged = (self.results.get("training") or {}).get("losses") or []
        pts = [(float(e["step"]), float(e["loss"])) for e in logged
               if isinstance(e, dict) and isinstance(e.get("loss"), (int, float)) and "step" in e]
        if pts:  # DDK: every logged optimizer step
            return [("training", pts)]
        pts = [(float(h["step"]), float(h["loss"])) for h in self.interval_history
               if isinstance(h.get("loss"), (int, float)) and "step" in h]
        return [("training", pts)] if pts else []


def _points(loss: list[Any]) -> list[tuple[float, float]]:
    return [(float(p[0]), float(p[1])) if isinstance(p, (list, tuple)) else (float(i), float(p))
            for i, p in enumerate(loss)]


def load_run(path: str | Path) -> Run:
    """Read a run folder (or its ``results.json``); errors name the file at fault."""
    p = Path(path)
    if p.is_file() and p.name == "results.json":
        p = p.parent
    if not p.is_dir():
        raise InputError("run folder does not exist", path=p)
    file = p / "results.json"
    if not file.is_file():
        raise InputError("no results.json here: not a finished run folder", path=file)
    run = Run(path=p, results=read_results(file))
    run.spend_by_domain_stage = _ledger_spend(p)
    return run


def _ledger_spend(run_dir: Path) -> dict[str, dict[int, int]]:
    """Charged calls per domain and stage from the run's ledger (empty without one)."""
    from domdistill.teachers.ledger import LEDGER_NAME, connect

    path = run_dir / LEDGER_NAME
    if not path.is_file():
        return {}
    try:
        con = connect(path, readonly=True)
        rows = con.execute("SELECT domain, stage, sum(charged) AS n FROM calls "
                           "GROUP BY domain, stage HAVING n > 0").fetchall()
        con.close()
    except sqlite3.DatabaseError as e:
        raise InputError(f"not a readable teacher ledger ({e})", path=path) from None
    out: dict[str, dict[int, int]] = {}
    for r in rows:
        stage = int(r["stage"]) if str(r["stage"]).isdigit() else 0
        out.setdefault(str(r["domain"]), {})[stage] = int(r["n"])
    return out


def label_runs(runs: Sequence[Run]) -> None:
    """Label each run by its method, adding the folder name where methods repeat."""
    methods = [r.method for r in runs]
    for r in runs:
        r.label = r.method if methods.count(r.method) == 1 else f"{r.method} ({r.path.name})"


def score_metric(runs: Sequence[Run]) -> str:
    """The headline metric shared by the runs (accuracy first, perplexity last)."""
    for m in SCORE_METRICS:
        if all(m in r.metrics.get("macro", {}) for r in runs):
            return m
    return next(iter(runs[0].metrics.get("macro", {})), "accuracy")


def interval(run: Run, block: str, metric: str) -> tuple[float, float] | None:
    """A confidence interval for an aggregate: the run's own (``<block>_ci``) if it has one, else
    for a proportion the Wilson interval (micro) or a normal approximation over domains whose
    per-domain variances use Jeffreys-smoothed shares, so that no interval has zero width."""
    own = run.metrics.get(f"{block}_ci", {}).get(metric)
    if own:
        return float(own[0]), float(own[1])
    if metric not in ("accuracy", "exact_match"):
        return None
    per = run.per_domain
    if block == "micro":
        n = sum(int(m.get("n", 0)) for m in per.values())
        p = run.metrics["micro"].get(metric)
        return None if not n or p is None else wilson(p, n)
    doms = list(per) if block == "macro" else run.metrics.get(block, {}).get("domains", [])
    doms = [d for d in doms if d in per and per[d].get("n") and metric in per[d]]
    if not doms:
        return None
    p = sum(per[d][metric] for d in doms) / len(doms)
    smoothed = {d: (per[d][metric] * per[d]["n"] + 0.5) / (per[d]["n"] + 1) for d in doms}
    se = math.sqrt(sum(q * (1 - q) / per[d]["n"] for d, q in smoothed.items())) / len(doms)
    return max(0.0, p - 1.96 * se), min(1.0, p + 1.96 * se)


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a share ``p`` of ``n`` trials (never of zero width)."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _score(block: dict[str, Any], metric: str) -> str:
    """A score, with the student/teacher perplexity ratio beside a perplexity when known."""
    text = _fmt(block.get(metric))
    ratio = block.get("ppl_ratio")
    return f"{text} ({ratio:.2f}x)" if metric == "perplexity" and isinstance(ratio, (int, float)) else text


def _no_answer(block: dict[str, Any]) -> str:
    """`` (40% no answer)`` beside a domain's score when a tenth or more of its outputs hold no
    parsable answer."""
    share = block.get("no_answer")
    return f" ({share:.0%} no answer)" if isinstance(share, (int, float)) and share >= 0.1 else ""


def _fmt(x: Any, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and math.isfinite(x) else "-"


# -- the document: a few block kinds rendered to Markdown and to HTML --------------------------
class Doc:
    def __init__(self) -> None:
        self.blocks: list[tuple[str, Any]] = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", (header, rows)))

    def image(self, path: Path, alt: str) -> None:
        self.blocks.append(("img", (path, alt)))

    def markdown(self) -> str:
        out = []
        for kind, v in self.blocks:
            if kind == "h":
                out.append("#" * v[0] + " " + v[1])
            elif kind == "p":
                out.append(v)
            elif kind == "table":
                header, rows = v
                rule = "|" + "|".join("---:" if num else "---" for num in _numeric_columns(rows)) + "|"
                out.append("\n".join(["| " + " | ".join(header) + " |", rule,
                                      *("| " + " | ".join(r) + " |" for r in rows)]))
            else:
                out.append(f"![{v[1]}]({PLOTS_DIR}/{v[0].name})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        body = []
        for kind, v in self.blocks:
            if kind == "h":
                body.append(f"<h{v[0]}>{html.escape(v[1])}</h{v[0]}>")
            elif kind == "p":
                body.append(f"<p>{_inline(v)}</p>")
            elif kind == "table":
                header, rows = v
                cls = [' class="num"' if num else "" for num in _numeric_columns(rows)]
                head = "".join(f"<th{k}>{_inline(c)}</th>" for k, c in zip(cls, header))
                trs = "".join("<tr>" + "".join(f"<td{k}>{_inline(c)}</td>" for k, c in zip(cls, r))
                              + "</tr>" for r in rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
            else:
                data = base64.b64encode(v[0].read_bytes()).decode("ascii")
                body.append(f'<figure><img alt="{html.escape(v[1])}" src="data:image/png;base64,{data}">'
                            "</figure>")
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
                + "\n".join(body) + "\n</body></html>\n")


_NUMBER = re.compile(r"^[-+\d.,\[\] /]*\d[-+\d.,\[\] /()xs]*$")


def _numeric_columns(rows: list[list[str]]) -> list[bool]:
    """Which columns hold only numbers (or '-'): those are right-aligned."""
    cols = list(zip(*rows)) if rows else []
    return [any(_NUMBER.match(c) for c in col) and all(_NUMBER.match(c) or c == "-" for c in col)
            for col in cols]


def _inline(text: str) -> str:
    """Markdown ``**bold**`` and ``code`` spans -> HTML (the only inline markup the report uses)."""
    parts = html.escape(text).split("**")
    text = "".join(f"<b>{s}</b>" if i % 2 else s for i, s in enumerate(parts))
    parts = text.split("`")
    return "".join(f"<code>{s}</code>" if i % 2 else s for i, s in enumerate(parts))


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;"
        "padding:3px 8px;text-align:left}th.num,td.num{text-align:right}"
        "th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}figure{margin:1em 0}"
        "code{background:#f3f3f3;padding:0 3px}")


# -- building the report ------------------------------------------------------------------------
def build_document(runs: Sequence[Run], figures: list[tuple[Path, str, str]], out: Path) -> Doc:
    """The report's text: runs, aggregate table, per-domain table, figures with captions."""
    metric = score_metric(runs)
    doc = Doc()
    doc.h(1, "domdistill report")
    doc.p(f"{len(runs)} run(s); headline metric: **{metric}**. Head/tail as each run defines them "
          "(tail: domains smaller than the mean domain of the training pool).")
    doc.table(["run", "folder", "data", "student", "teacher", "wall time"],
              [[r.label, f"`{os.path.relpath(r.path, out.resolve())}`", str((r.results.get("dataset") or {}).get("name", "-")),
                str((r.results.get("student") or {}).get("model", "-")),
                str((r.results.get("teacher") or {}).get("model", "-")),
                f"{r.results.get('wall_seconds', 0):.0f} s"] for r in runs])
    doc.h(2, f"Scores ({metric})")
    ci_level = runs[0].metrics.get("ci_level", 0.95)
    with_budget = any("spent" in r.budget for r in runs)
    rows, any_ci = [], False
    for r in runs:
        cells = [r.label + (" ⚠ (see Warnings)" if r.results.get("warnings") else "")]
        for block in ("macro", "micro", "head", "tail"):
            ci = interval(r, block, metric)
            any_ci = any_ci or ci is not None
            cells.append(_score(r.metrics.get(block, {}), metric)
                         + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else ""))
        if with_budget:
            cells.append(calls_summary(r.budget, with_limit=True))
        rows.append(cells)
    doc.table(["method", "macro", "micro", "head", "tail",
               *(["teacher calls (spent / limit)"] if with_budget else [])], rows)
    notes = []
    if any_ci:
        notes.append(f"Brackets: {ci_level:.0%} intervals; a run's own where results.json has one "
                     "(macro: replicates of the test set with each domain's outcomes drawn from "
                     "Jeffreys-smoothed shares), otherwise Wilson (micro) or a normal "
                     "approximation from per-domain counts.")
    if metric == "perplexity":
        notes.append("Perplexity: lower is better; (x) is the student's perplexity divided by the "
                     "teacher's where the run measured both.")
    if notes:
        doc.p(" ".join(notes))
    warned = [r for r in runs if r.results.get("warnings")]
    if warned:
        doc.h(2, "Warnings")
        doc.p("These runs finished with teacher calls that failed or could not be used (their "
              "scores rest on fewer training examples than planned; `domdistill ledger RUN` lists "
              "the calls and why each was or was not charged), or with student outputs that hold "
              "no parsable answer or give one answer to most inputs (the run's "
              "`predictions.jsonl` keeps every output).")
        doc.table(["run", "warning"], [[r.label, w] for r in warned for w in r.results["warnings"]])
    doc.h(2, f"Per-domain {metric}")
    first = runs[0]
    counts = {d: n for r in runs for d, n in r.domain_counts.items()}
    domains = sorted({d for r in runs for d in r.per_domain}, key=lambda d: (-counts.get(d, 0), d))
    tail = set(first.tail_domains)
    doc.table(["domain", "pool", "test n", "split", *[r.label for r in runs]],
              [[d, str(counts.get(d, "-")), str(first.per_domain.get(d, {}).get("n", "-")),
                "tail" if d in tail else "head",
                *[_score(r.per_domain.get(d, {}), metric) + _no_answer(r.per_domain.get(d, {}))
                  for r in runs]] for d in domains])
    timing_table(doc, runs)
    if figures:
        doc.h(2, "Figures")
    for path, title, caption in figures:
        doc.h(3, title)
        doc.p(caption)
        doc.image(path, title)
    return doc


def timing_table(doc: Doc, runs: Sequence[Run]) -> None:
    """Seconds per phase of each run, stage by stage where the run has stages."""
    timed = [r for r in runs if isinstance(r.results.get("phase_seconds"), dict)]
    if not timed:
        return
    phases = list(dict.fromkeys(k for r in timed for k in r.results["phase_seconds"]))
    rows = []
    for r in timed:
        for h in r.stage_history:
            if isinstance(h.get("seconds"), dict) and len(r.stage_history) > 1:
                rows.append([r.label, f"stage {h['stage']}",
                             *[_seconds(h["seconds"].get(p)) for p in phases]])
        rows.append([r.label, "all", *[_seconds(r.results["phase_seconds"].get(p)) for p in phases]])
    doc.h(2, "Where the time went")
    doc.p("Wall seconds per phase (BalDistill family: `score` is the student scoring its own "
          "rationales, `teacher` the teacher's calls, `train` fine-tuning, `eval` evaluation).")
    doc.table(["run", "part", *[f"{p} (s)" for p in phases]], rows)


def _seconds(value: Any) -> str:
    return f"{value:,.1f}" if isinstance(value, (int, float)) else "-"


def draw_figures(runs: Sequence[Run], folder: Path) -> list[tuple[Path, str, str]]:
    """All figures that the runs have data for: (png, title, caption)."""
    metric = score_metric(runs)
    specs = [
        ("domain_scores.png", "Per-domain score vs domain frequency",
         f"Each point is one domain: its {metric} on the test set against its size in the training "
         "pool (log scale). Circles are head domains, triangles tail domains; dotted lines are the "
         "head and tail means. Only the best and worst domain of each group are named.",
         lambda p: plots.domain_scores(runs, metric, p)),
        ("budget.png", "Teacher calls by domain and stage",
         "Charged teacher calls per domain (from the run's ledger), stacked by stage; tail domains "
         "carry a *. Synthesized tail examples are counted in the domain they were made for.",
         lambda p: plots.budget(runs, p)),
        ("stages.png", "Scores after each stage",
         f"Macro, head and tail {metric} of the retrained student after each stage, against the "
         "teacher calls spent so far; single-stage baselines are one point.",
         lambda p: plots.stage_curves(runs, metric, p)),
        ("ddk.png", "DDK domain weights and perplexity gap",
         "Per domain (rows) and interval (columns): the sampling weight DDK gave the domain and "
         "the student's perplexity divided by the teacher's (1 = no gap).",
         lambda p: plots.ddk_training(runs, p)),
        ("loss.png", "Training loss",
         "Training loss against optimizer steps; BalDistill retrains the student each stage, so "
         "stages are drawn end to end (dashed lines at stage starts).",
         lambda p: plots.loss_curves(runs, p)),
    ]
    out = []
    for name, title, caption, draw in specs:
        path = draw(folder / name)
        if path is not None:
            out.append((path, title, caption))
    return out


def collect_runs(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """The run folders among ``paths`` (a run folder, its ``results.json``, or a folder of runs
    such as ``runs/demo``), in order, and a note for each path skipped as not a run (a report
    file, an unfinished run). A path that does not exist is an error; so is finding no run."""
    found: list[Path] = []
    notes: list[str] = []
    for raw in paths:
        p = Path(raw)
        if p.is_file() and p.name == "results.json":
            p = p.parent
        if (p / "results.json").is_file():
            found.append(p)
        elif not p.exists():
            raise InputError("run folder does not exist", path=p)
        elif p.is_dir() and (inner := sorted(c for c in p.iterdir() if (c / "results.json").is_file())):
            found += inner
            notes += [f"{c}: skipped, not a finished run (no results.json)" for c in sorted(p.iterdir())
                      if c.is_dir() and c.name != PLOTS_DIR and c not in inner]
        else:
            notes.append(f"{p}: skipped, not a finished run (no results.json)")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    if not unique:
        raise InputError("no finished run among " + ", ".join(str(p) for p in paths)[:300]
                         + " (a run folder holds results.json)")
    return unique, notes


def default_out(run_dirs: Sequence[Path]) -> Path:
    """The single run folder, or the runs' common parent."""
    paths = [p.resolve() for p in run_dirs]
    if len(paths) == 1:
        return paths[0]
    return Path(os.path.commonpath(paths))


def write_report(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Write ``report.md``, ``report.html`` and ``report_plots/`` for the runs; returns the .md path."""
    if not run_dirs:
        raise InputError("no run folders given")
    runs = [load_run(p) for p in run_dirs]
    label_runs(runs)
    out = Path(out) if out is not None else default_out([r.path for r in runs])
    if out.exists() and not out.is_dir():
        raise InputError("report destination exists and is not a folder", path=out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out / PLOTS_DIR) as tmp:
        tmp.chmod(0o755)  # a report is for reading
        try:
            figures = draw_figures(runs, tmp)
            doc = build_document(runs, figures, out)
            page, text = doc.html("domdistill report"), doc.markdown()
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            files = ", ".join(str(r.path / "results.json") for r in runs)
            raise InputError(f"cannot build the report ({type(err).__name__}: {str(err)[:80]}): "
                             f"a value in {files} is not what a run writes") from None
    atomic_write_text(out / "report.html", page)
    atomic_write_text(out / "report.md", text)
    return out / "report.md"
