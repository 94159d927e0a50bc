"""The ``domdistill`` command line: one typer app, commands grouped by pipeline stage."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console

from domdistill.errors import DomDistillError
from domdistill.redact import redact

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


class Interrupted(BaseException):
    """Ctrl-C, raised by our SIGINT handler (click would turn a KeyboardInterrupt into a plain
    "Aborted!" with exit 1)."""


def _on_sigint(signum: int, frame: Any) -> None:
    raise Interrupted()


def main() -> None:
    """Console entry point: every failure a user can cause prints one ``error:`` line (no
    traceback) and exits 2; Ctrl-C exits 130."""
    signal.signal(signal.SIGINT, _on_sigint)
    quiet_library_bars()
    try:
        app()
    except DomDistillError as e:
        fail(str(e))
    except (Interrupted, KeyboardInterrupt):
        fail("interrupted; files keep their last complete version (a run continues with "
             "--resume)", code=130)
    except (OSError, sqlite3.Error, RuntimeError) as e:
        if _disk_full(e):
            fail(f"could not write to disk ({e}): the disk is full or a file size limit was "
                 "reached. Every file keeps its last complete version; free space and run the "
                 "same command with --resume.")
        if isinstance(e, OSError):
            where = f"{e.filename}: " if e.filename else ""
            fail(f"{where}{e.strerror or e}")
        if isinstance(e, sqlite3.Error):
            fail(f"a ledger file cannot be used ({e})")
        raise
    except RecursionError:
        fail("the input is nested too deeply to read")


def quiet_library_bars() -> None:
    """Off a terminal, silence the Hugging Face libraries' progress bars ("Loading weights",
    "Writing model shards", dataset maps): in a log they are noise around the phase lines. Set
    before transformers, datasets or the hub client are imported (they read it on import)."""
    if not sys.stderr.isatty():
        for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
            os.environ.setdefault(name, "1")


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: MESSAGE`` (secrets redacted, never wrapped) on stderr and exit (under a
    launcher every process exits; the main process prints the message once)."""
    if os.environ.get("RANK", "0") == "0":
        err_console.print("[bold red]error:[/]", end=" ")
        err_console.print(redact(message), highlight=False, markup=False, soft_wrap=True)
    sys.exit(code)


def _disk_full(e: BaseException) -> bool:
    """An out-of-space error: ENOSPC/EFBIG/EDQUOT, SQLite's 'full' / 'disk I/O' failure, or
    torch.save's failed write (it reports a short write as a RuntimeError)."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    words = ("database or disk is full", "disk I/O error") if isinstance(e, sqlite3.Error) else \
        ("file write failed", "unexpected pos")
    return any(w in str(e) for w in words)
