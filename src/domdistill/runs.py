"""Run folders: one folder per run, never overwritten by accident, resumable.

Layout: ``config.yaml``, ``ledger.sqlite``, ``checkpoints/``, ``results.json``, ``report.md``,
``logs/``. A folder that already holds anything is used only with ``overwrite`` (wiped first)
or ``resume`` (kept; training continues from the latest complete checkpoint).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from domdistill.errors import RunFolderError
from domdistill.training.checkpoints import latest_checkpoint


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run folder."""

    root: Path
    resumed: bool = False

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.sqlite"

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
    def report(self) -> Path:
        return self.root / "report.md"

    def latest_checkpoint(self, subdir: str | None = None) -> Path | None:
        """The newest complete checkpoint under ``checkpoints/`` (or ``checkpoints/subdir``)."""
        return latest_checkpoint(self.checkpoints / subdir if subdir else self.checkpoints)


def remove_stray_temporaries(root: Path) -> list[Path]:
    """Delete what an interrupted atomic write left behind (``.NAME.XXXX.tmp`` files and folders);
    the file or folder it was writing is unchanged. Returns what was removed."""
    stray = [p for p in root.rglob(".*.tmp") if p.name.count(".") >= 3]
    for p in stray:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return stray


def prepare_run_dir(path: str | Path, overwrite: bool = False, resume: bool = False) -> RunDir:
    """Create (or reopen) a run folder and its ``logs/``.

    An existing folder that holds any file needs ``overwrite`` (its content is deleted) or ``resume`` (its
    content is kept). ``resume`` on a folder that holds no run is an error, as is asking for both.
    """
    root = Path(path)
    if overwrite and resume:
        raise RunFolderError(f"{root}: choose either --overwrite or --resume, not both")
    if root.exists() and not root.is_dir():
        raise RunFolderError(f"{root}: exists and is not a folder")
    occupied = root.is_dir() and any(p.is_file() for p in root.rglob("*"))
    if resume:
        if not occupied:
            raise RunFolderError(f"{root}: nothing to resume (the run folder is missing or empty); "
                                 "start the run without --resume")
        if not (root / "config.yaml").exists() and not (root / "checkpoints").is_dir():
            raise RunFolderError(f"{root}: not a run folder (no config.yaml or checkpoints/); "
                                 "refusing to resume into it")
        remove_stray_temporaries(root)
    elif occupied:
        if not overwrite:
            raise RunFolderError(f"{root}: run folder already exists and is not empty; pass "
                                 "--overwrite to replace it or --resume to continue it")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(exist_ok=True)
    (root / "checkpoints").mkdir(exist_ok=True)
    return RunDir(root=root, resumed=resume)
