"""``domdistill report RUN_DIR [RUN_DIR ...]``: compare runs in report.md / report.html with plots."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from domdistill.cli import app


@app.command("report")
def report_command(
    run_dirs: list[Path] = typer.Argument(..., help="Run folders (each holding results.json)"),
    out: Optional[Path] = typer.Option(None, "--out", help="Report folder (default: the single run "
                                       "folder, or the runs' common parent)"),
) -> None:
    """Compare runs: score tables with confidence intervals, budget and per-domain plots."""
    from domdistill.evaluation.report import PLOTS_DIR, write_report

    md = write_report(run_dirs, out)
    console = Console(soft_wrap=True, highlight=False)
    plots = sorted((md.parent / PLOTS_DIR).glob("*.png"))
    console.print(f"wrote {md}")
    console.print(f"wrote {md.with_suffix('.html')} (self-contained)")
    console.print(f"wrote {len(plots)} plots in {md.parent / PLOTS_DIR}: {', '.join(p.name for p in plots)}")
