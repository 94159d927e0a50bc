"""What a run's ledger says about money: totals, limits, and breakdowns by domain, stage, status,
kind and billing reason. Every count here is over the same rows, so totals and tables agree:
``charged`` rows are what the budget counts, ``tokens`` are the tokens of charged rows (actual
usage once delivered, the reservation's estimate while in flight or possibly billed), and
``cached`` rows (served from a shared cache) are never charged."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from domdistill.errors import RunFolderError
from domdistill.teachers.ledger import LEDGER_NAME, connect

_CHARGED_TOKENS = ("CASE WHEN charged = 0 THEN 0 WHEN status = 'delivered' "
                   "THEN prompt_tokens + completion_tokens ELSE reserved_tokens END")
_SUMS = ("count(*) AS rows, sum(charged) AS charged, sum(status='delivered') AS delivered, "
         "sum(status='failed') AS failed, sum(status='failed' AND charged) AS possibly_billed, "
         "sum(status='delivered' AND problem IS NOT NULL) AS unusable, "
         "sum(status='inflight') AS inflight, sum(cached) AS cached, "
         f"sum({_CHARGED_TOKENS}) AS tokens, sum(cost * charged) AS cost")
GROUPS = ("status", "billing", "domain", "stage", "kind")


def ledger_report(run_dir: str | Path) -> dict[str, Any]:
    """The spend of a run folder's ledger (or of a ledger file)."""
    run_dir = Path(run_dir)
    path = run_dir / LEDGER_NAME if run_dir.is_dir() else run_dir
    if not path.is_file():
        raise RunFolderError(f"{path}: no teacher ledger here (expected RUN_DIR/{LEDGER_NAME})")
    try:
        con = connect(path, readonly=True)
        try:
            cols = {r[1] for r in con.execute("PRAGMA table_info(calls)")}
            sums = _SUMS if "problem" in cols else _SUMS.replace("problem IS NOT NULL", "0")
            spend = dict(con.execute("SELECT calls, tokens, money FROM spend").fetchone())
            limits = {r["name"]: r["value"] for r in con.execute("SELECT name, value FROM limits")}
            report: dict[str, Any] = {"ledger": str(path), "spent": spend, "limits": limits,
                                      "totals": dict(con.execute(f"SELECT {sums} FROM calls").fetchone())}
            for col in GROUPS:
                if col not in cols:
                    report[f"by_{col}"] = {}
                    continue
                rows = con.execute(f"SELECT {col} AS name, {sums} FROM calls GROUP BY {col} "
                                   "ORDER BY charged DESC, name").fetchall()
                report[f"by_{col}"] = {str(r["name"]): {k: r[k] for k in r.keys() if k != "name"}
                                       for r in rows}
            billing = "billing" if "billing" in cols else "NULL AS billing"
            report["failures"] = [dict(r) for r in con.execute(
                f"SELECT domain, stage, kind, charged, {billing}, error FROM calls "
                "WHERE status='failed' ORDER BY updated DESC LIMIT 5")]
            if "problem" in cols:
                report["problems"] = [dict(r) for r in con.execute(
                    "SELECT domain, stage, kind, problem FROM calls WHERE status='delivered' AND "
                    "problem IS NOT NULL ORDER BY updated DESC LIMIT 5")]
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise RunFolderError(f"{path}: not a readable teacher ledger ({e})") from None
    return report
