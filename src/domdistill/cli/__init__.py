"""The ``domdistill`` command line: one typer app, commands grouped by pipeline stage."""

from __future__ import annotations

import errno
import sqlite3
import sys

import typer
from rich.console import Console

from domdistill.errors import DomDistillError

app = typer.Typer(
    name="domdistill",
    help="Domain-aware knowledge distillation of LLMs: BalDistill (black-box, budgeted teacher "
         "calls) and DDK (white-box logit KD with domain re-weighting).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)


def _register() -> None:
    # Each module adds its commands to ``app``; imported here so ``--help`` lists them all.
    from domdistill.cli import data as _data  # noqa: F401
    for name in ("ledger", "evaluate", "run", "report"):
        try:
            __import__(f"domdistill.cli.{name}")
        except ModuleNotFoundError as e:  # a command module not written yet
            if e.name != f"domdistill.cli.{name}":
                raise


_register()


def main() -> None:
    """Console entry point: project errors print one clear message and exit 2."""
    try:
        app()
    except DomDistillError as e:
        err_console.print("[bold red]error:[/]", end=" ")
        err_console.print(str(e), highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
    except (OSError, sqlite3.OperationalError, RuntimeError) as e:
        if not _disk_full(e):
            raise
        err_console.print("[bold red]error:[/]", end=" ")
        err_console.print(f"could not write to disk ({e}): the disk is full or a file size limit "
                          "was reached. Every file keeps its last complete version; free space "
                          "and run the same command with --resume.", highlight=False, markup=False,
                          soft_wrap=True)
        sys.exit(2)


def _disk_full(e: BaseException) -> bool:
    """An out-of-space error: ENOSPC/EFBIG/EDQUOT, SQLite's 'full' / 'disk I/O' failure, or
    torch.save's failed write (it reports a short write as a RuntimeError)."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    words = ("database or disk is full", "disk I/O error") if isinstance(e, sqlite3.Error) else \
        ("file write failed", "unexpected pos")
    return any(w in str(e) for w in words)
