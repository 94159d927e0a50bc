"""Complete-or-absent checkpoints.

A checkpoint is written into ``<dir>/.staging/checkpoint-N``, closed with a manifest
(``domdistill_checkpoint.json``: step and the size of every file) and then renamed to
``<dir>/checkpoint-N``. A folder named ``checkpoint-N`` whose manifest is missing or whose files
do not match it is never loaded. Method state (stage index, pool, selections, domain weights)
travels inside the checkpoint as ``method_state.json``.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from domdistill.io import atomic_write_json, fsync_dir

log = logging.getLogger(__name__)

MANIFEST = "domdistill_checkpoint.json"
METHOD_STATE = "method_state.json"
STAGING = ".staging"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}


def write_manifest(folder: Path, step: int) -> None:
    """Close a checkpoint folder: fsync its files and record their sizes (written last)."""
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb+") as f:
                os.fsync(f.fileno())
    atomic_write_json(folder / MANIFEST, {"step": step, "files": _files(folder)})


def is_complete(folder: str | Path) -> bool:
    """True when the folder has a manifest and every listed file exists with its recorded size."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if not files:
        return False
    return all((folder / name).is_file() and (folder / name).stat().st_size == size
               for name, size in files.items())


def checkpoints(folder: str | Path) -> list[Path]:
    """All ``checkpoint-N`` folders (complete or not), oldest step first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The complete checkpoint with the highest step; incomplete ones are skipped with a warning."""
    for ckpt in reversed(checkpoints(folder)):
        if is_complete(ckpt):
            return ckpt
        log.warning("skipping incomplete checkpoint %s", ckpt)
    return None


def publish(staged: Path, final: Path) -> None:
    """Rename a finished staging folder into place (replacing a stale folder of the same name)."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(staged, final)
    fsync_dir(final.parent)


def clear_staging(folder: str | Path) -> None:
    """Remove half-written checkpoints left by a killed process."""
    shutil.rmtree(Path(folder) / STAGING, ignore_errors=True)


def prune(folder: str | Path, keep: int) -> None:
    """Keep the ``keep`` newest complete checkpoints; delete older and incomplete ones."""
    all_ckpts = checkpoints(folder)
    complete = [c for c in all_ckpts if is_complete(c)]
    keep_set = set(complete[-keep:]) if keep > 0 else set(complete)
    newest = complete[-1] if complete else None
    for c in all_ckpts:
        if c not in keep_set and (newest is None or c != newest):
            shutil.rmtree(c, ignore_errors=True)


def save_method_state(folder: Path, state: dict[str, Any]) -> None:
    atomic_write_json(folder / METHOD_STATE, state)


def read_method_state(checkpoint: str | Path | None) -> dict[str, Any] | None:
    """The method state stored in a checkpoint, or None (damaged: RunFolderError naming it)."""
    if checkpoint is None:
        return None
    from domdistill.io import read_json

    return read_json(Path(checkpoint) / METHOD_STATE, "the checkpoint's method state")


_DAMAGED = (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, json.JSONDecodeError,
            UnicodeDecodeError, SafetensorError)
_DAMAGED_WORDS = ("PytorchStreamReader", "zip archive", "unpickl", "invalid load key", "header")


@contextmanager
def loading_checkpoint(checkpoint: str | Path | None, trainer: Any) -> Iterator[None]:
    """Around ``trainer.train(resume_from_checkpoint=checkpoint)``: a file of the checkpoint
    that cannot be read (same size, other bytes) becomes a RunFolderError naming the checkpoint
    instead of a traceback. Errors after the first resumed step pass through unchanged."""
    step = trainer.state.global_step
    try:
        yield
    except (*_DAMAGED, RuntimeError) as err:
        damaged = isinstance(err, _DAMAGED) or any(w in str(err) for w in _DAMAGED_WORDS)
        if checkpoint is None or trainer.state.global_step > max(step, _step_of(checkpoint)) \
                or not damaged:
            raise
        from domdistill.errors import RunFolderError

        raise RunFolderError(f"{checkpoint}: the checkpoint cannot be read ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:120] if str(err) else ''}); it is damaged. "
                             "Delete that folder and resume again: the run continues from the "
                             "previous checkpoint (or the start of the stage)") from None


def _step_of(checkpoint: str | Path) -> int:
    m = _NAME.match(Path(checkpoint).name)
    return int(m.group(1)) if m else 0


def resume_point(folder: str | Path) -> tuple[Path | None, dict[str, Any] | None]:
    """(latest complete checkpoint, its method state) for a method that resumes a run."""
    ckpt = latest_checkpoint(folder)
    return ckpt, read_method_state(ckpt)
