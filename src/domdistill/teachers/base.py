"""What every teacher back-end speaks: requests, responses, call errors and the Teacher protocol.

A request carries both the rendered chat messages (what an API or local model sees) and the
structured fields behind them (input, gold answer, exemplars), so replaying teachers (recorded
outputs, the built-in program) can answer the same request without parsing prompts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Task = Literal["rationale", "synthesis"]


@dataclass(frozen=True)
class TeacherRequest:
    """One teacher call.

    ``task='rationale'``: explain ``input`` (with ``answer`` shown when not None).
    ``task='synthesis'``: write one new example for ``domain`` from ``exemplars``; ``index`` is
    its position in the domain's sequence of synthetic examples, ``with_rationale`` asks for the
    reasoning in the same call (synthesis_cost 1).
    """

    task: Task
    domain: str
    messages: tuple[tuple[str, str], ...]
    input: str | None = None
    answer: str | None = None
    exemplars: tuple[tuple[str, str], ...] = ()
    index: int = 0
    with_rationale: bool = True
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def chat(self) -> list[dict[str, str]]:
        """Messages in the OpenAI chat format."""
        return [{"role": r, "content": c} for r, c in self.messages]

    @property
    def sampling(self) -> dict[str, Any]:
        return dict(self.params)

    def key(self, teacher_id: str) -> str:
        """Cache key: hash of the teacher, the full messages, the task fields and sampling params."""
        material = {"teacher": teacher_id, "task": self.task, "domain": self.domain,
                    "messages": self.messages, "input": self.input, "answer": self.answer,
                    "index": self.index if self.task == "synthesis" else None,
                    "with_rationale": self.with_rationale, "params": self.params}
        blob = json.dumps(material, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def describe(self) -> str:
        """Short human description (for error messages): the task and the start of the input."""
        if self.task == "synthesis":
            return f"synthesis #{self.index} for domain '{self.domain}'"
        text = " ".join((self.input or "").split())
        return f"rationale for input '{text[:80]}{'...' if len(text) > 80 else ''}'"


@dataclass
class TeacherResponse:
    """A teacher's answer. ``data`` holds structured fields when the back-end has them
    (``input``, ``answer``, ``rationale``); ``logprobs`` top-k log-probabilities per token."""

    text: str
    data: dict[str, Any] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[list[tuple[str, float]]] | None = None


@dataclass
class CallError(Exception):
    """A failed attempt, classified for the retry layer and the ledger.

    ``retryable``: another attempt may succeed (429, 5xx, timeout, connection error).
    ``stop``: no further request can succeed either (bad key, quota gone): end the batch now.
    ``systematic``: the same rejection will meet every request (wrong model, path or parameters):
    end the batch after a few identical ones.
    ``outage``: the server is unreachable or failing (refused, 5xx, timeout): every sender waits
    together, and a batch whose teacher stays down stops after ``teacher.max_outage_s``.
    ``maybe_billed``: the provider may have processed it (read timeouts, dropped connections).
    ``billing``: why it can or cannot have been billed, in words, for the ledger.
    """

    message: str
    retryable: bool = False
    status: int | None = None
    retry_after: float | None = None
    stop: bool = False
    maybe_billed: bool = False
    rate_limited: bool = field(default=False)
    systematic: bool = False
    outage: bool = False
    billing: str = ""

    def __str__(self) -> str:
        return self.message


@runtime_checkable
class Teacher(Protocol):
    """A teacher back-end. ``complete`` answers up to ``max_batch`` requests at once, in order,
    or raises :class:`CallError` for the whole batch."""

    teacher_id: str
    model: str
    max_batch: int

    async def complete(self, requests: list[TeacherRequest]) -> list[TeacherResponse]: ...

    async def aclose(self) -> None: ...
