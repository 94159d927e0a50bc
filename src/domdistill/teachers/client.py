"""The synchronous teacher client the methods call: cache, budget, concurrency, retries, stops.

Every request goes through the same path::

    ledger lookup (cached? done, not charged)
      -> reserve in the ledger (budget checked atomically, row written in flight)
      -> rate limits -> teacher call with the one retry layer
      -> ledger: delivered (response, usage, latency, attempts) or failed (dead letter)

Reservations run one window (``concurrency`` requests, one commit) ahead of the ``concurrency``
senders, and the replies that arrive together are committed together right after, so a sender
goes from one reply to its next request without waiting for SQLite; the batch returns once
every delivery is committed. A reserved request that a stop keeps from being sent gets its
charge back.

Failures are charged by what the provider can have billed (see :mod:`domdistill.teachers.ledger`).
When the teacher is down or rate-limited, every sender waits together (:class:`OutageGate`).
A stop condition ends the batch: a bad key or quota, a rejection that meets every request
(wrong model, path or parameters: after a few identical ones), a teacher that answered nothing
for ``max_outage_s``, a rate limit that does not lift, the budget. Answers already delivered are
kept, requests not sent are recorded as failed with no charge, and :attr:`Batch.stopped` says
what happened and how to resume (rerun: the ledger serves what was delivered and only the
missing requests are sent).

BalDistill use: one delivered training example = one charged call. ``rationales(selected,
with_answer=True, tags={"stage": i})`` for head domains; ``synthesize(domain, exemplars,
shortfall, tags={"stage": i})`` for tail domains (``synthesis_cost=2`` charges two calls per
synthetic example: the example, then an independent rationale that the answer filter checks).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

from domdistill.data.example import DomainExample
from domdistill.evaluation.answers import is_correct
from domdistill.teachers.base import Teacher, TeacherRequest
from domdistill.teachers.ledger import Ledger, Tags
from domdistill.teachers.prompts import PromptSet, parse_synthesis, with_final_answer
from domdistill.teachers.results import DELIVERED, Batch, Outcome, RationaleResult, SynthResult
from domdistill.teachers.retry import RetryPolicy
from domdistill.teachers.sending import CallPath


class TeacherClient(CallPath):
    """Calls ``teacher`` for batches of requests, recording every call in ``ledger``: builds
    the requests and reads the replies; :class:`CallPath` sends them."""

    def __init__(self, teacher: Teacher, ledger: Ledger, prompts: PromptSet | None = None, *,
                 concurrency: int = 16, requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None, retry: RetryPolicy | None = None,
                 temperature: float = 0.0, max_tokens: int = 512, synthesis_cost: int = 1,
                 top_logprobs: int | None = None, max_outage_s: float | None = 30.0):
        super().__init__(teacher, ledger, concurrency=concurrency, retry=retry,
                         requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute,
                         temperature=temperature, top_logprobs=top_logprobs, max_outage_s=max_outage_s)
        self.prompts = prompts or PromptSet()
        self.params: tuple[tuple[str, Any], ...] = (("max_tokens", max_tokens), ("temperature", temperature))
        if top_logprobs:
            self.params += (("top_logprobs", top_logprobs),)
        self.max_tokens = max_tokens
        self.synthesis_cost = synthesis_cost
        self._synth_next: dict[str, int] = defaultdict(int)

    @property
    def endpoint(self) -> str:
        """Where the teacher is, for messages: its URL, or its id."""
        return getattr(self.teacher, "endpoint", None) or self.teacher.teacher_id

    # ------------------------------------------------------------------ public API
    def rationales(self, examples: Iterable[DomainExample], with_answer: bool = True,
                   tags: dict[str, Any] | None = None) -> Batch:
        """One zero-shot-CoT rationale per example (gold answer in the prompt when ``with_answer``)."""
        examples = list(examples)
        reqs = [self._rationale_request(ex.domain, ex.input, ex.answer if with_answer else None)
                for ex in examples]
        kind = (tags or {}).get("kind", "rationale")
        outcomes = self._run(self._call_all([(r, self._tags(r.domain, tags, kind)) for r in reqs]))
        out = Batch()
        for ex, o in zip(examples, outcomes):
            text = self._rationale_text(o)
            ans = self.prompts.parse_answer(text) if text is not None else None
            out.append(RationaleResult(ex, o.status, text, ans, is_correct(ans, ex.answer, self._task),
                                       o.cached, o.error, o.problem))
        out.stopped = self._stop
        return out

    def synthesize(self, domain: str, exemplars: list[DomainExample], n: int,
                   tags: dict[str, Any] | None = None, start: int | None = None) -> Batch:
        """``n`` new examples for ``domain`` from ``exemplars`` (k real examples), numbered from
        ``start`` (default: after those this client already asked for in this domain)."""
        first = self._synth_next[domain] if start is None else start
        self._synth_next[domain] = max(self._synth_next[domain], first + n)
        shown = tuple((ex.input, ex.answer) for ex in exemplars)
        one_call = self.synthesis_cost == 1
        reqs = [TeacherRequest("synthesis", domain, self.prompts.synthesis_messages(
                    domain, list(shown), first + i, one_call), exemplars=shown, index=first + i,
                    with_rationale=one_call, params=self.params) for i in range(n)]
        kind = (tags or {}).get("kind", "synthesis")
        outcomes = self._run(self._call_all([(r, self._tags(domain, tags, kind)) for r in reqs]))
        parsed = [self._parse_synth(o) for o in outcomes]
        rat_outcomes: list[Outcome | None] = [None] * n
        if not one_call:
            todo = [i for i, p in enumerate(parsed) if p is not None]
            rreqs = [self._rationale_request(domain, parsed[i][0], None) for i in todo]  # type: ignore[index]
            done = self._run(self._call_all([(r, self._tags(domain, tags, kind)) for r in rreqs]))
            for i, o in zip(todo, done):
                rat_outcomes[i] = o
        out = Batch()
        for i, (o, p) in enumerate(zip(outcomes, parsed)):
            out.append(self._synth_result(domain, first + i, o, p, rat_outcomes[i]))
        out.stopped = self._stop
        return out

    def reset_stop(self) -> None:
        """Allow sending again after a stop (e.g. after raising the budget)."""
        self._stop = None

    def close(self) -> None:
        """Close the teacher, the event loop and the ledger."""
        if not self._loop.is_closed():
            self._loop.run_until_complete(self.teacher.aclose())
            self._loop.close()
            self.ledger.close()

    def __enter__(self) -> "TeacherClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ building requests
    @property
    def _task(self) -> str:
        return self.prompts.task

    def _rationale_request(self, domain: str, text: str, answer: str | None) -> TeacherRequest:
        return TeacherRequest("rationale", domain, self.prompts.rationale_messages(text, answer),
                              input=text, answer=answer, params=self.params)

    @staticmethod
    def _tags(domain: str, tags: dict[str, Any] | None, kind: str) -> Tags:
        stage = (tags or {}).get("stage")
        return Tags(domain=domain, stage=None if stage is None else str(stage), kind=kind)

    @staticmethod
    def _rationale_text(o: Outcome) -> str | None:
        if o.status != DELIVERED or o.problem is not None:
            return None
        if o.data and o.data.get("rationale") is not None:
            return with_final_answer(o.data["rationale"], o.data.get("answer"))
        return o.text

    def _parse_synth(self, o: Outcome) -> tuple[str, str | None, str, str | None] | None:
        """(input, rationale, intended answer, teacher's own answer) of a synthesis reply, or None."""
        if o.status != DELIVERED or (o.problem is not None and not o.data):
            return None
        if o.data and o.data.get("input"):
            d = o.data
            return d["input"], d.get("rationale"), str(d.get("answer")), d.get("prediction")
        new_input, rationale, answer_text = parse_synthesis(o.text or "")
        if not new_input or answer_text is None:
            return None
        answer = self.prompts.parse_answer(f"The answer is: {answer_text}") or answer_text
        return new_input, rationale, answer, None

    def _synth_result(self, domain: str, index: int, o: Outcome,
                      parsed: tuple[str, str | None, str, str | None] | None,
                      rat: Outcome | None) -> SynthResult:
        if o.status != DELIVERED:
            return SynthResult(domain, index, o.status, error=o.error)
        if parsed is None:
            problem = o.problem or "unparseable synthesis reply: no 'Input:' and 'The answer is:' lines"
            if o.key is not None and o.problem is None:
                self.ledger.set_problem(o.key, problem)
            return SynthResult(domain, index, DELIVERED, text=o.text, cached=o.cached,
                               problem=problem)
        new_input, rationale, intended, prediction = parsed
        text, cached = None, o.cached
        if rat is not None:  # synthesis_cost 2: an independent rationale, checked by the filter
            if rat.status != DELIVERED:
                return SynthResult(domain, index, rat.status, text=o.text, error=rat.error)
            if rat.problem is not None:
                return SynthResult(domain, index, DELIVERED, text=o.text, problem=rat.problem)
            text, cached = self._rationale_text(rat), cached and rat.cached
        elif rationale:
            text = with_final_answer(rationale, prediction if prediction is not None else intended)
        cot_answer = self.prompts.parse_answer(text) if text else None
        ex = DomainExample(id=f"{domain}/synthetic-{index}", domain=domain, input=new_input,
                           answer=intended, rationale=text,
                           metadata={"synthetic": True, "teacher_answer": cot_answer})
        return SynthResult(domain, index, DELIVERED, ex, text, cot_answer,
                           is_correct(cot_answer, intended, self._task), cached)
