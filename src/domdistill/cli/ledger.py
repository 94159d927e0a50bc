"""``domdistill ledger RUN_DIR [--json]``: teacher spend by domain, stage and status."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from domdistill.cli import app
from domdistill.errors import RunFolderError
from domdistill.teachers.ledger import LEDGER_NAME, connect

_SUMS = ("count(*) AS rows, sum(status='delivered') AS delivered, sum(status='failed') AS failed, "
         "sum(status='inflight') AS inflight, sum(charged) AS charged, sum(cached) AS cached, "
         "sum(prompt_tokens + completion_tokens) AS tokens, sum(cost) AS cost")


def ledger_report(run_dir: str | Path) -> dict[str, Any]:
    """Spend of a run folder's ledger: totals, limits, and breakdowns by domain, stage, status, kind."""
    run_dir = Path(run_dir)
    path = run_dir / LEDGER_NAME if run_dir.is_dir() else run_dir
    if not path.is_file():
        raise RunFolderError(f"{path}: no teacher ledger here (expected RUN_DIR/{LEDGER_NAME})")
    try:
        con = connect(path, readonly=True)
        spend = dict(con.execute("SELECT calls, tokens, money FROM spend").fetchone())
        limits = {r["name"]: r["value"] for r in con.execute("SELECT name, value FROM limits")}
        report: dict[str, Any] = {"ledger": str(path), "spent": spend, "limits": limits,
                                  "totals": dict(con.execute(f"SELECT {_SUMS} FROM calls").fetchone())}
        for col in ("domain", "stage", "status", "kind"):
            rows = con.execute(f"SELECT {col} AS name, {_SUMS} FROM calls GROUP BY {col} "
                               "ORDER BY charged DESC, name").fetchall()
            report[f"by_{col}"] = {str(r["name"]): {k: r[k] for k in r.keys() if k != "name"}
                                   for r in rows}
        report["failures"] = [dict(r) for r in con.execute(
            "SELECT domain, stage, kind, error FROM calls WHERE status='failed' ORDER BY updated DESC LIMIT 5")]
        con.close()
    except sqlite3.DatabaseError as e:
        raise RunFolderError(f"{path}: not a readable teacher ledger ({e})") from None
    return report


def _table(title: str, groups: dict[str, dict[str, Any]]) -> Table:
    t = Table(title=title)
    cols = ("rows", "charged", "delivered", "failed", "inflight", "cached", "tokens", "cost")
    t.add_column(title.split()[-1])
    for c in cols:
        t.add_column(c, justify="right")
    for name, v in groups.items():
        t.add_row(name, *(f"{(v.get(c) or 0):.4f}" if c == "cost" else str(v.get(c) or 0) for c in cols))
    return t


@app.command("ledger")
def ledger_cmd(run_dir: Path = typer.Argument(..., help="Run folder (or a ledger.sqlite file)"),
               as_json: bool = typer.Option(False, "--json", help="Print the report as JSON")) -> None:
    """Show teacher spend by domain, stage and status (calls, tokens, money; failures)."""
    report = ledger_report(run_dir)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    con = Console()
    s, lim = report["spent"], report["limits"]
    limit = f" of {int(lim['calls'])}" if lim.get("calls") is not None else ""
    con.print(f"[bold]{report['ledger']}[/]: {s['calls']}{limit} calls charged, "
              f"{s['tokens']} tokens, {s['money']:.4f} money")
    for key in ("status", "domain", "stage", "kind"):
        con.print(_table(f"spend by {key}", report[f"by_{key}"]))
    for f in report["failures"]:
        con.print(f"failed: {f['domain']} stage {f['stage']}: {f['error']}", highlight=False,
                  markup=False)
