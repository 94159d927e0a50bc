"""Atomic file and folder writes: a reader never sees a half-written file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: str | Path, what: str) -> Any:
    """The JSON document at ``path`` (None when there is no such file). A file that cannot be
    read or parsed is a RunFolderError naming it and ``what`` it holds."""
    from domdistill.errors import RunFolderError

    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0][:120]
        raise RunFolderError(f"{path}: cannot read {what} ({reason}); the file is damaged. "
                             "Restore it from a backup, or start over with --overwrite") from None


def check_writable(path: str | Path, what: str = "output") -> None:
    """Raise an InputError (naming ``path``) unless a file can be written there: checked before
    the work that produces it, not after."""
    from domdistill.errors import InputError

    path = Path(path).expanduser().absolute()
    if path.is_dir():
        raise InputError(f"the {what} path is a folder; give a file name", path=path)
    parent = next(p for p in path.parents if p.exists())
    if not parent.is_dir():
        raise InputError(f"cannot write the {what} here: {parent} is a file, not a folder", path=path)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write the {what} here: {parent} is not writable", path=path)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it is renamed to ``path``.

    An existing ``path`` is replaced only after the new folder is complete. On failure the
    temporary folder is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
