"""Runs launched as several processes (``accelerate launch``, ``torchrun``): who does what.

Every process trains (the Trainer's DDP); the run folder, caches, results, trackers, teacher
calls and the measurements every process must agree on (domain perplexities) belong to the main
process, which hands its results, or its error, to the others. Batched generation and scoring
inside :func:`sharded` split their batches over the processes and gather the results. In a
single process every helper here is a plain call.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
_sharding = False


def launched() -> bool:
    """Whether this process is one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def die_with_launcher() -> None:
    """Under a launcher on Linux: ask the kernel to SIGTERM this process when its parent (the
    launcher) dies. A launcher killed on its own otherwise leaves its workers running (each
    in a process group of its own), still calling the teacher."""
    if not launched() or not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # no prctl in this C library: nothing to arm
        return
    if os.getppid() == 1:  # the launcher died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


def _state() -> Any:
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())  # as the Trainer sets it up


def is_main() -> bool:
    return not launched() or _state().is_main_process


def world_size() -> int:
    return _state().num_processes if launched() else 1


def device() -> Any:
    """This process's accelerator (``cuda:LOCAL_RANK`` under a launcher), else ``cuda``."""
    return _state().device if launched() else "cuda"


def barrier() -> None:
    if launched():
        _state().wait_for_everyone()


def shut_down() -> None:
    """Under a launcher, tear down the process group before the process exits (one left up
    can abort the process at exit: 'terminate called without an active exception')."""
    if launched():
        _state().destroy_process_group()


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` in the main process; every process returns its result or raises its error (so
    no process waits forever for a main process that failed)."""
    if not launched():
        return fn()
    from accelerate.utils import broadcast_object_list

    box: list[Any] = [None, None]
    if is_main():
        try:
            box[0] = fn()
        except Exception as e:  # handed to the other processes, then raised everywhere
            box[1] = e
    broadcast_object_list(box, from_process=0)
    if box[1] is not None:
        raise box[1]
    return box[0]


@contextmanager
def sharded() -> Iterator[None]:
    """Inside this block, :func:`my_batches` gives each process its share of the batches and
    :func:`gather_rows` merges the shares; every process must enter it (a collective)."""
    global _sharding
    before, _sharding = _sharding, launched()
    try:
        yield
    finally:
        _sharding = before


def my_batches(batches: Sequence[T]) -> Sequence[T]:
    """The batches this process computes: every ``world_size``-th from its rank inside
    :func:`sharded`, all of them elsewhere. Each batch stays whole, as in one process, so
    padding and outputs are the same."""
    if not _sharding:
        return batches
    state = _state()
    return batches[state.process_index::state.num_processes]


def gather_rows(rows: dict[int, T]) -> dict[int, T]:
    """Every process's ``{position: result}`` merged, on every process, inside :func:`sharded`."""
    if not _sharding:
        return rows
    from accelerate.utils import gather_object

    merged: dict[int, T] = {}
    for part in gather_object([rows]):
        merged.update(part)
    return merged
