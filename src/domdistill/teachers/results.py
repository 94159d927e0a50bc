"""What a batch of teacher calls returns: one result per request, in request order, and the
stop message when the batch ended early."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from domdistill.data.example import DomainExample
from domdistill.errors import TeacherError
from domdistill.teachers.base import TeacherRequest
from domdistill.teachers.ledger import Tags

DELIVERED, FAILED, EXHAUSTED = "delivered", "failed", "budget_exhausted"


@dataclass
class RationaleResult:
    """The teacher's rationale for ``example``; ``answer`` is the teacher's parsed final answer
    and ``correct`` whether it matches the example's gold answer (the BalDistill answer filter)."""

    example: DomainExample
    status: str
    text: str | None = None
    answer: str | None = None
    correct: bool = False
    cached: bool = False
    error: str | None = None
    problem: str | None = None


@dataclass
class SynthResult:
    """A synthetic example for ``domain``: ``example`` carries the new input, the teacher's
    intended answer and the rationale; ``agrees`` whether the rationale's answer matches it."""

    domain: str
    index: int
    status: str
    example: DomainExample | None = None
    text: str | None = None
    answer: str | None = None
    agrees: bool = False
    cached: bool = False
    error: str | None = None
    problem: str | None = None


class Batch(list):
    """Results in request order; ``stopped`` is the stop message when the batch ended early."""

    stopped: str | None = None

    @property
    def delivered(self) -> list[Any]:
        """Answered and charged, usable or not."""
        return [r for r in self if r.status == DELIVERED]

    @property
    def usable(self) -> list[Any]:
        """Delivered replies with no ``problem`` (not empty, parseable)."""
        return [r for r in self if r.status == DELIVERED and r.problem is None]

    @property
    def failed(self) -> list[Any]:
        """Not answered: failed calls and requests a stop kept from being sent."""
        return [r for r in self if r.status != DELIVERED]

    def raise_if_stopped(self) -> None:
        if self.stopped:
            raise TeacherError(self.stopped)


@dataclass
class Outcome:
    """What one distinct request came to, before it is turned into a result: the reply text
    (and structured data of a recorded or program teacher), or the error of a dead letter."""

    status: str
    text: str | None = None
    data: dict[str, Any] | None = None
    cached: bool = False
    error: str | None = None
    problem: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class Reserved:
    """A request for the ledger; ``new`` when its reservation charged it now (not a resend, and
    not a request that was never reserved)."""

    key: str
    request: TeacherRequest
    tags: Tags
    new: bool = False
