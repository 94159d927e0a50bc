"""``domdistill report RUN_DIR [RUN_DIR ...]``: compare runs in report.md / report.html with plots."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from domdistill.cli import app


@app.command("report")
def report_command(
    run_dirs: list[Path] = typer.Argument(..., help="Run folders (each holding results.json), or "
                                          "folders of runs (e.g. runs/demo); other paths are "
                                          "skipped with a note"),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default: the single run "
                                       "folder, the folder of runs given, or the runs' common parent)"),
) -> None:
    """Compare runs: score tables with confidence intervals, budget and per-domain plots."""
    from domdistill.cli import err_console
    from domdistill.evaluation.report import PLOTS_DIR, collect_runs, write_report

    runs, skipped = collect_runs(run_dirs)
    for note in skipped:
        err_console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    if out is None and len(run_dirs) == 1 and runs[0] != run_dirs[0].resolve():
        out = run_dirs[0]  # a folder of runs: the report goes beside them
    md = write_report(runs, out)
    console = Console(soft_wrap=True, highlight=False)
    plots = sorted((md.parent / PLOTS_DIR).glob("*.png"))
    console.print(f"wrote {md}")
    console.print(f"wrote {md.with_suffix('.html')} (self-contained)")
    console.print(f"wrote {len(plots)} plots in {md.parent / PLOTS_DIR}: {', '.join(p.name for p in plots)}")
