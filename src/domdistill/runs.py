"""Run folders: one folder per run, one owner at a time, never overwritten by accident, resumable.

Layout: ``config.yaml``, ``run.json`` (identity and history), ``ledger.sqlite``, ``state.json``,
``checkpoints/``, ``results.json``, ``report.md``, ``logs/``. A folder that already holds anything
is used only with ``overwrite`` (emptied first) or ``resume`` (kept; the run continues where it
stopped, after :mod:`domdistill.resume` checked that it is the same run).

While a process works in a folder it holds an exclusive lock on the folder itself (``flock``,
released by the OS when the process ends, however it ends) and names itself in ``.owner``;
``run``, ``--resume`` and ``--overwrite`` take that lock before they read or change anything.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domdistill.errors import RunFolderError
from domdistill.io import atomic_write_json, read_json
from domdistill.redact import cut, redact
from domdistill.training.checkpoints import latest_checkpoint

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; run folders are not protected there
    fcntl = None  # type: ignore[assignment]

OWNER = ".owner"
MANIFEST = "run.json"
_BOOKKEEPING = {OWNER}  # files that do not make a folder "hold a run"


class FolderLock:
    """An exclusive ``flock`` on a folder, held until :meth:`release` or the process ends."""

    def __init__(self, root: Path):
        self.root = root
        self._fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None:
            return
        fd = os.open(self.root, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunFolderError(f"{self.root}: {describe_owner(self.root)} is using this run "
                                 "folder; wait for it to finish (or stop it), or choose another "
                                 "--out. Nothing was changed.") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __getstate__(self) -> dict[str, Any]:  # other processes get the path, never the fd
        return {"root": self.root, "_fd": None}


def describe_owner(root: Path) -> str:
    """Who holds ``root``, from its ``.owner`` file: PID, host, start time and command."""
    try:
        owner = json.loads((root / OWNER).read_text(encoding="utf-8"))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner["started"]))
        return (f"another domdistill process (PID {owner['pid']} on {owner['host']}, started "
                f"{started}: {cut(owner['command'], 120)})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another domdistill process"


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run folder (and the lock, while this process owns it)."""

    root: Path
    resumed: bool = False
    lock: FolderLock | None = field(default=None, compare=False, repr=False)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.sqlite"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def predictions(self) -> Path:
        """The last evaluation's outputs, one JSON line per test example."""
        return self.root / "predictions.jsonl"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    def latest_checkpoint(self, subdir: str | None = None) -> Path | None:
        """The newest complete checkpoint under ``checkpoints/`` (or ``checkpoints/subdir``)."""
        return latest_checkpoint(self.checkpoints / subdir if subdir else self.checkpoints)

    def release(self) -> None:
        """Give up the folder's lock (the end of the run)."""
        if self.lock is not None:
            self.lock.release()


def remove_stray_temporaries(root: Path) -> list[Path]:
    """Delete what an interrupted atomic write left behind (``.NAME.XXXX.tmp`` files and folders);
    the file or folder it was writing is unchanged. Returns what was removed."""
    stray = [p for p in root.rglob(".*.tmp") if p.name.count(".") >= 3]
    for p in stray:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return stray


def holds_run(root: Path) -> bool:
    """True when ``root`` holds any file but the lock's bookkeeping."""
    return root.is_dir() and any(p.is_file() and p.name not in _BOOKKEEPING for p in root.rglob("*"))


def _empty(root: Path) -> None:
    """Delete everything inside ``root`` but ``root`` itself (which carries the lock)."""
    for p in root.iterdir():
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _os_error(root: Path, err: OSError, doing: str) -> RunFolderError:
    name = err.filename or root
    return RunFolderError(f"{name}: cannot {doing} ({err.strerror or err})")


def open_run_dir(path: str | Path, overwrite: bool = False, resume: bool = False,
                 check: Any = None) -> RunDir:
    """Take the run folder at ``path`` for this process: create it (new run), empty it
    (``overwrite``) or keep it (``resume``). ``check(run_dir)`` runs once the lock is held and
    before anything in the folder changes (the resume checks); on any failure the folder is left
    as it was (a folder this call created is removed again)."""
    root = Path(path)
    if overwrite and resume:
        raise RunFolderError(f"{root}: choose either --overwrite or --resume, not both")
    if root.exists() and not root.is_dir():
        raise RunFolderError(f"{root}: exists and is not a folder")
    if resume and not holds_run(root):
        raise RunFolderError(f"{root}: nothing to resume (the run folder is missing or empty); "
                             "start the run without --resume")
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _os_error(root, err, "create the run folder") from None
    lock = FolderLock(root)
    run_dir = RunDir(root=root, resumed=resume, lock=lock)
    try:
        lock.acquire()
        if resume:
            if not (root / "config.yaml").exists() and not (root / "checkpoints").is_dir():
                raise RunFolderError(f"{root}: not a run folder (no config.yaml or checkpoints/); "
                                     "refusing to resume into it")
            if check is not None:
                check(run_dir)
            remove_stray_temporaries(root)
        elif holds_run(root):
            if not overwrite:
                raise RunFolderError(f"{root}: run folder already exists and is not empty; pass "
                                     "--overwrite to replace it or --resume to continue it")
            _empty(root)
        try:
            (root / "logs").mkdir(exist_ok=True)
            (root / "checkpoints").mkdir(exist_ok=True)
            atomic_write_json(root / OWNER, {"pid": os.getpid(), "host": socket.gethostname(),
                                             "started": time.time(),
                                             "command": redact(" ".join(sys.argv))})
        except OSError as err:
            raise _os_error(root, err, "write into the run folder") from None
    except BaseException:
        lock.release()
        if created:
            shutil.rmtree(root, ignore_errors=True)
        raise
    return run_dir


def prepare_run_dir(path: str | Path, overwrite: bool = False, resume: bool = False) -> RunDir:
    """:func:`open_run_dir` without resume checks, lock released on return (tools and tests
    that manage a folder themselves)."""
    run_dir = open_run_dir(path, overwrite=overwrite, resume=resume)
    run_dir.release()
    return run_dir


def read_manifest(run_dir: RunDir) -> dict[str, Any]:
    """``run.json`` (``{}`` for a folder written before it existed); damaged: RunFolderError."""
    return read_json(run_dir.manifest, "the run's identity and history") or {}


def write_manifest(run_dir: RunDir, manifest: dict[str, Any]) -> None:
    atomic_write_json(run_dir.manifest, manifest)
