"""The synchronous teacher client the methods call: cache, budget, concurrency, retries, stops.

Every request goes through the same path::

    ledger lookup (cached? done, not charged)
      -> reserve in the ledger (budget checked atomically, row written in flight)
      -> rate limits -> teacher call with the one retry layer
      -> ledger: delivered (response, usage, latency, attempts) or failed (dead letter)

A stop condition (rate limit that does not lift, bad key or quota, budget exhausted) ends the
batch: answers already delivered are kept, requests not sent are recorded as failed with no
charge, and :attr:`Batch.stopped` says what happened and how to resume (rerun: the ledger
serves what was delivered and only the missing requests are sent).

BalDistill use: one delivered training example = one charged call. ``rationales(selected,
with_answer=True, tags={"stage": i})`` for head domains; ``synthesize(domain, exemplars,
shortfall, tags={"stage": i})`` for tail domains (``synthesis_cost=2`` charges two calls per
synthetic example: the example, then an independent rationale that the answer filter checks).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Iterable

from domdistill.data.example import DomainExample
from domdistill.errors import TeacherError
from domdistill.evaluation.answers import is_correct
from domdistill.teachers.base import CallError, Teacher, TeacherRequest, TeacherResponse
from domdistill.teachers.ledger import CallRecord, Ledger, Tags
from domdistill.teachers.prompts import PromptSet, parse_synthesis, with_final_answer
from domdistill.teachers.retry import RateLimiter, RetryPolicy

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


class Batch(list):
    """Results in request order; ``stopped`` is the stop message when the batch ended early."""

    stopped: str | None = None

    @property
    def delivered(self) -> list[Any]:
        return [r for r in self if r.status == DELIVERED]

    def raise_if_stopped(self) -> None:
        if self.stopped:
            raise TeacherError(self.stopped)


@dataclass
class _Outcome:
    status: str
    text: str | None = None
    data: dict[str, Any] | None = None
    cached: bool = False
    error: str | None = None


class TeacherClient:
    """Calls ``teacher`` for batches of requests, recording every call in ``ledger``."""

    def __init__(self, teacher: Teacher, ledger: Ledger, prompts: PromptSet | None = None, *,
                 concurrency: int = 16, requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None, retry: RetryPolicy | None = None,
                 temperature: float = 0.0, max_tokens: int = 512, synthesis_cost: int = 1,
                 top_logprobs: int | None = None):
        self.teacher, self.ledger = teacher, ledger
        self.prompts = prompts or PromptSet()
        self.concurrency = concurrency
        self.retry = retry or RetryPolicy()
        self.params: tuple[tuple[str, Any], ...] = (("max_tokens", max_tokens), ("temperature", temperature))
        if top_logprobs:
            self.params += (("top_logprobs", top_logprobs),)
        self.max_tokens = max_tokens
        self.synthesis_cost = synthesis_cost
        self._rpm = RateLimiter(requests_per_minute) if requests_per_minute else None
        self._tpm = RateLimiter(tokens_per_minute) if tokens_per_minute else None
        self._synth_next: dict[str, int] = defaultdict(int)
        self._loop = asyncio.new_event_loop()
        self._stop: str | None = None
        self._stop_event: asyncio.Event | None = None

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
                                       o.cached, o.error))
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
        rat_outcomes: list[_Outcome | None] = [None] * n
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
    def _rationale_text(o: _Outcome) -> str | None:
        if o.status != DELIVERED:
            return None
        if o.data and o.data.get("rationale") is not None:
            return with_final_answer(o.data["rationale"], o.data.get("answer"))
        return o.text

    def _parse_synth(self, o: _Outcome) -> tuple[str, str | None, str, str | None] | None:
        """(input, rationale, intended answer, teacher's own answer) of a synthesis reply, or None."""
        if o.status != DELIVERED:
            return None
        if o.data and o.data.get("input"):
            d = o.data
            return d["input"], d.get("rationale"), str(d.get("answer")), d.get("prediction")
        new_input, rationale, answer_text = parse_synthesis(o.text or "")
        if not new_input or answer_text is None:
            return None
        answer = self.prompts.parse_answer(f"The answer is: {answer_text}") or answer_text
        return new_input, rationale, answer, None

    def _synth_result(self, domain: str, index: int, o: _Outcome,
                      parsed: tuple[str, str | None, str, str | None] | None,
                      rat: _Outcome | None) -> SynthResult:
        if o.status != DELIVERED:
            return SynthResult(domain, index, o.status, error=o.error)
        if parsed is None:
            return SynthResult(domain, index, FAILED, text=o.text, cached=o.cached,
                               error=f"synthesis #{index} for domain '{domain}': the reply has no "
                                     "'Input:' and 'The answer is:' lines")
        new_input, rationale, intended, prediction = parsed
        text, cached = None, o.cached
        if rat is not None:  # synthesis_cost 2: an independent rationale, checked by the filter
            if rat.status != DELIVERED:
                return SynthResult(domain, index, rat.status, text=o.text, error=rat.error)
            text, cached = self._rationale_text(rat), cached and rat.cached
        elif rationale:
            text = with_final_answer(rationale, prediction if prediction is not None else intended)
        cot_answer = self.prompts.parse_answer(text) if text else None
        ex = DomainExample(id=f"{domain}/synthetic-{index}", domain=domain, input=new_input,
                           answer=intended, rationale=text,
                           metadata={"synthetic": True, "teacher_answer": cot_answer})
        return SynthResult(domain, index, DELIVERED, ex, text, cot_answer,
                           is_correct(cot_answer, intended, self._task), cached)

    # ------------------------------------------------------------------ the call path
    def _run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    async def _call_all(self, items: list[tuple[TeacherRequest, Tags]]) -> list[_Outcome]:
        tid = self.teacher.teacher_id
        keys = [r.key(tid) for r, _ in items]
        found: dict[str, CallRecord] = await asyncio.wrap_future(self.ledger.lookup(keys))
        outcomes: dict[str, _Outcome] = {k: _Outcome(DELIVERED, rec.response, rec.data, True)
                                         for k, rec in found.items()}
        todo: dict[str, tuple[TeacherRequest, Tags]] = {}
        for key, item in zip(keys, items):
            if key not in outcomes:
                todo.setdefault(key, item)
        self._stop_event = asyncio.Event()
        if self._stop:
            self._stop_event.set()
        sem = asyncio.Semaphore(self.concurrency)
        pending = list(todo.items())
        step = max(1, int(self.teacher.max_batch))
        chunks = [pending[i:i + step] for i in range(0, len(pending), step)]
        tasks = [asyncio.ensure_future(self._run_chunk(c, sem, outcomes)) for c in chunks]
        try:
            await asyncio.gather(*tasks)
        except BaseException:  # e.g. the ledger cannot write (disk full): stop the other chunks
            for t in tasks:    # before raising, so none is left running on a closed loop
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [outcomes[k] for k in keys]

    def _set_stop(self, message: str) -> None:
        if self._stop is None:
            self._stop = message
        if self._stop_event is not None:
            self._stop_event.set()

    async def _run_chunk(self, chunk: list[tuple[str, tuple[TeacherRequest, Tags]]],
                         sem: asyncio.Semaphore, outcomes: dict[str, _Outcome]) -> None:
        async with sem:
            led = self.ledger
            if self._stop:
                await self._record_unsent(chunk, outcomes)
                return
            res = await _wait([led.reserve(key, tags, self._request_record(req), self._estimate(req),
                                           self.teacher.teacher_id) for key, (req, tags) in chunk])
            send: list[tuple[str, TeacherRequest]] = []
            for (key, (req, _)), r in zip(chunk, res):
                if r.outcome == "cached":
                    rec = r.record
                    outcomes[key] = _Outcome(DELIVERED, rec.response, rec.data, True)  # type: ignore[union-attr]
                elif r.outcome == "exhausted":
                    self._set_stop(f"teacher budget reached: {r.reason}. Requests not sent are "
                                   "reported as budget_exhausted; raise the budget and run again "
                                   "to continue (delivered answers are reused from the ledger).")
                    outcomes[key] = _Outcome(EXHAUSTED, error=f"{req.describe()}: {r.reason}")
                else:
                    send.append((key, req))
            if send:
                await self._send(send, outcomes)

    async def _record_unsent(self, chunk: list[tuple[str, tuple[TeacherRequest, Tags]]],
                             outcomes: dict[str, _Outcome]) -> None:
        status = EXHAUSTED if self._stop and self._stop.startswith("teacher budget") else FAILED
        futs = []
        for key, (req, tags) in chunk:
            msg = f"{req.describe()}: not sent, the batch stopped ({self._stop})"
            outcomes[key] = _Outcome(status, error=msg)
            if status == FAILED:
                futs.append(self.ledger.fail(key, msg, tags=tags, request=self._request_record(req)))
        await _wait(futs)

    async def _send(self, send: list[tuple[str, TeacherRequest]], outcomes: dict[str, _Outcome]) -> None:
        reqs = [r for _, r in send]
        if self._rpm:
            await self._rpm.acquire(len(reqs))
        if self._tpm:
            await self._tpm.acquire(sum(self._estimate(r) for r in reqs))
        start, attempts, maybe_billed = time.monotonic(), 0, False
        while True:
            attempts += 1
            try:
                responses = await self.teacher.complete(reqs)
                break
            except CallError as e:
                maybe_billed = maybe_billed or e.maybe_billed
                last = e
            except TeacherError as e:  # e.g. a recorded teacher with no record: never invent one
                last = CallError(str(e))
            except Exception as e:  # anything else a back-end raises: a dead letter, never a lost row
                last = CallError(f"{type(e).__name__}: {e}", maybe_billed=True)
            if last.stop:
                self._set_stop(f"the teacher refused the request ({last}); fix the cause (API key, "
                               "quota) and run again: delivered answers are reused from the ledger.")
            out_of_retries = attempts > self.retry.max_retries
            if last.rate_limited and out_of_retries:
                self._set_stop(f"the teacher's rate limit did not lift ({last} after {attempts} "
                               "attempts). Delivered answers are kept in the ledger and the rest "
                               "are recorded as failed; wait for the limit to reset (or lower "
                               "teacher.concurrency / requests_per_minute) and run the same command "
                               "again: only the missing requests are sent.")
            if not last.retryable or out_of_retries or self._stop:
                await self._fail(send, f"{last} (after {attempts} attempt(s))", attempts,
                                 release=not maybe_billed, outcomes=outcomes)
                return
            await self._sleep(self.retry.delay(attempts - 1, last.retry_after))
        latency = (time.monotonic() - start) / len(reqs)
        await _wait([self.ledger.complete(key, resp.text, self._response_data(resp),
                                          resp.prompt_tokens, resp.completion_tokens, latency, attempts)
                     for (key, _), resp in zip(send, responses)])
        for (key, _), resp in zip(send, responses):
            outcomes[key] = _Outcome(DELIVERED, resp.text, self._response_data(resp))

    async def _fail(self, send: list[tuple[str, TeacherRequest]], error: str, attempts: int,
                    release: bool, outcomes: dict[str, _Outcome]) -> None:
        futs = []
        for key, req in send:
            msg = f"{req.describe()}: {error}"
            outcomes[key] = _Outcome(FAILED, error=msg)
            futs.append(self.ledger.fail(key, msg, attempts, release))
        await _wait(futs)

    async def _sleep(self, delay: float) -> None:
        """Wait ``delay`` seconds, waking early when the batch is stopped."""
        assert self._stop_event is not None
        try:
            await asyncio.wait_for(self._stop_event.wait(), timeout=delay)
        except asyncio.TimeoutError:
            pass

    def _estimate(self, req: TeacherRequest) -> int:
        """Tokens to reserve before sending: ~4 characters a prompt token plus the max reply."""
        return sum(len(c) for _, c in req.messages) // 4 + self.max_tokens

    @staticmethod
    def _request_record(req: TeacherRequest) -> dict[str, Any]:
        return {"task": req.task, "domain": req.domain, "messages": req.chat, "index": req.index,
                "params": req.sampling}

    @staticmethod
    def _response_data(resp: TeacherResponse) -> dict[str, Any] | None:
        if resp.data is None and resp.logprobs is None:
            return None
        data = dict(resp.data or {})
        if resp.logprobs is not None:
            data["logprobs"] = resp.logprobs
        return data


async def _wait(futures: list[Future]) -> list[Any]:
    """Await ledger operations (futures resolved by the ledger's writer thread)."""
    if len(futures) == 1:
        return [await asyncio.wrap_future(futures[0])]
    return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))
