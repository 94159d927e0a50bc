"""What a run is doing, one line per phase on stderr (a terminal, a pipe or a log file alike).

``say("stage 2/3: scoring 412 candidates")`` prints ``[12:04:31] stage 2/3: scoring 412
candidates``. Progress bars stay for terminals only; these lines are what a log keeps.
"""

from __future__ import annotations

import os
import sys
import time

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence (or restore) the phase lines, e.g. for ``--json`` output or tests."""
    global _quiet
    _quiet = quiet


def say(message: str) -> None:
    """One phase line on stderr, timestamped, flushed at once (under ``accelerate launch`` /
    ``torchrun``: from the main process only)."""
    if not _quiet and os.environ.get("RANK", "0") == "0":
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
