"""``domdistill ledger RUN_DIR [--json]``: teacher spend by domain, stage and status."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from domdistill.cli import app
from domdistill.teachers.spend import GROUPS, ledger_report

COLUMNS = ("rows", "charged", "delivered", "unusable", "failed", "possibly_billed", "inflight",
           "cached", "tokens", "cost")


def _cell(v: dict[str, Any], c: str) -> str:
    return f"{(v.get(c) or 0):.4f}" if c == "cost" else str(v.get(c) or 0)


def _table(title: str, groups: dict[str, dict[str, Any]]) -> Table:
    t = Table(title=title)
    t.add_column(title.split()[-1])
    for c in COLUMNS:
        t.add_column(c.replace("_", " "), justify="right")
    for name, v in groups.items():
        t.add_row(name, *(_cell(v, c) for c in COLUMNS))
    return t


def print_group(con: Console, title: str, groups: dict[str, dict[str, Any]]) -> None:
    """A table where it fits; in a narrower terminal one line per row (no cut headers)."""
    table = _table(title, groups)
    if con.measure(table, options=con.options.update_width(10_000)).maximum <= con.width:
        con.print(table)
        return
    con.print(f"[bold]{title}[/]")
    for name, v in groups.items():
        shown = [f"{c.replace('_', ' ')} {_cell(v, c)}" for c in COLUMNS
                 if c in ("rows", "charged") or v.get(c)]
        con.print(f"  {name}: " + ", ".join(shown), highlight=False, markup=False)


@app.command("ledger")
def ledger_cmd(run_dir: Path = typer.Argument(..., help="Run folder (or a ledger.sqlite file)"),
               as_json: bool = typer.Option(False, "--json", help="Print the report as JSON")) -> None:
    """Show teacher spend by domain, stage and status (calls, tokens, money; failures)."""
    report = ledger_report(run_dir)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    con = Console(width=None if sys.stdout.isatty() else 200)  # a pipe or log: no 80-column cut
    t, lim = report["totals"], report["limits"]
    limit = f" of {int(lim['calls'])}" if lim.get("calls") is not None else ""
    con.print(f"[bold]{report['ledger']}[/]: {t['charged'] or 0}{limit} calls charged, "
              f"{t['tokens'] or 0} tokens, {t['cost'] or 0:.4f} money; {t['delivered'] or 0} "
              f"delivered ({t['unusable'] or 0} unusable, {t['cached'] or 0} from a shared cache), "
              f"{t['failed'] or 0} failed ({t['possibly_billed'] or 0} possibly billed, charged), "
              f"{t['inflight'] or 0} in flight", highlight=False)
    s = report["spent"]
    if s["calls"] != (t["charged"] or 0):
        con.print(f"warning: the ledger's spend counter says {s['calls']} calls, its rows "
                  f"{t['charged'] or 0}: the file was changed outside domdistill", style="yellow")
    for key in GROUPS:
        print_group(con, f"spend by {key}", report[f"by_{key}"])
    for f in report["failures"]:
        con.print(f"failed ({f['billing'] or ('charged' if f['charged'] else 'not charged')}): "
                  f"{f['domain']} stage {f['stage']}: {f['error']}", highlight=False, markup=False)
    for p in report.get("problems", []):
        con.print(f"unusable: {p['domain']} stage {p['stage']}: {p['problem']}", highlight=False,
                  markup=False)
