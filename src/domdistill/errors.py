"""The project's own error types: every failure a user can cause is one of these."""

from __future__ import annotations

from pathlib import Path


class DomDistillError(Exception):
    """Base class of every error domdistill raises on purpose (bad input, budget, teacher)."""


class InputError(DomDistillError):
    """Bad input data or configuration, located as precisely as possible."""

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None,
                 field: str | None = None):
        self.path = str(path) if path is not None else None
        if self.path is not None and len(self.path) > 300:  # a path that long is not a path
            self.path = f"{self.path[:120]}... ({len(self.path):,} characters)"
        self.line = line
        self.field = field
        self.reason = message
        where = ":".join(str(p) for p in (self.path, line) if p is not None)
        parts = [where] if where else []
        if field:
            parts.append(f"field '{field}'")
        prefix = ", ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ConfigError(InputError):
    """A configuration file or value that cannot be used."""


class BudgetExceededError(DomDistillError):
    """A teacher call would exceed the run's hard budget."""


class TeacherError(DomDistillError):
    """A teacher could not deliver an answer (after retries, or with no record of the request)."""


class RunFolderError(DomDistillError):
    """A run folder exists and neither --overwrite nor --resume was given, or cannot be resumed."""
