"""The path every teacher request takes, asynchronously: reserve, send, retry, record, stop.

See :mod:`domdistill.teachers.client` for the whole flow. :class:`CallPath` holds the event loop,
the rate limiters, the outage gate and the stop state; the client builds requests on top of it.
Failures are charged by what the provider can have billed (:mod:`domdistill.teachers.ledger`);
an interrupted batch (Ctrl-C) gives back the charge of every request that was not on its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from domdistill.errors import TeacherError
from domdistill.teachers.base import CallError, Teacher, TeacherRequest, TeacherResponse
from domdistill.teachers.ledger import CallRecord, Ledger, Tags
from domdistill.teachers.results import DELIVERED, EXHAUSTED, FAILED, Outcome, Reserved
from domdistill.teachers.retry import OutageGate, RateLimiter, RetryPolicy

SYSTEMATIC_STOP_AFTER = 3  # identical rejections (wrong model, path, parameters) that end a batch
EMPTY_REPLY = "empty reply (whitespace only)"

@dataclass
class _Attempts:
    """How far one request got: attempts made, why it may be billed, usage of blank draws."""

    count: int = 0
    billed: str | None = None
    used: tuple[int, int] = (0, 0)


class CallPath:
    """Sends batches of requests to ``teacher`` through ``ledger``: cache, budget, concurrency,
    rate limits, retries, outage waits and stop conditions."""

    def __init__(self, teacher: Teacher, ledger: Ledger, *, concurrency: int = 16,
                 retry: RetryPolicy | None = None, requests_per_minute: float | None = None,
                 tokens_per_minute: float | None = None, temperature: float = 0.0,
                 top_logprobs: int | None = None, max_outage_s: float | None = 30.0):
        self.teacher, self.ledger = teacher, ledger
        self.concurrency = concurrency
        self.retry = retry or RetryPolicy()
        self.temperature, self.top_logprobs = temperature, top_logprobs
        self.max_outage_s = max_outage_s
        self.missing_logprobs = 0  # replies without the log-probabilities that were asked for
        self._rpm = RateLimiter(requests_per_minute) if requests_per_minute else None
        self._tpm = RateLimiter(tokens_per_minute) if tokens_per_minute else None
        self._loop = asyncio.new_event_loop()
        self._stop: str | None = None
        self._stop_event: asyncio.Event | None = None
        self._writes: list[asyncio.Future] = []
        self._unwritten: list[tuple[Reserved, TeacherResponse, float, int]] = []
        self._gate = OutageGate(max_outage_s)
        self._rejections: Counter[str] = Counter()

    # ------------------------------------------------------------------ the call path
    def _run(self, coro: Any) -> Any:
        task = self._loop.create_task(coro)
        try:
            return self._loop.run_until_complete(task)
        except BaseException:  # Ctrl-C lands outside the coroutine: cancel it and let it unwind
            task.cancel()
            with contextlib.suppress(BaseException):
                self._loop.run_until_complete(task)
            raise

    async def _call_all(self, items: list[tuple[TeacherRequest, Tags]]) -> list[Outcome]:
        tid = self.teacher.teacher_id
        keys = [r.key(tid) for r, _ in items]
        found: dict[str, CallRecord] = self.ledger.lookup(keys)
        outcomes: dict[str, Outcome] = {k: self._cached(k, rec) for k, rec in found.items()}
        todo: dict[str, tuple[TeacherRequest, Tags]] = {}
        for key, item in zip(keys, items):
            if key not in outcomes:
                todo.setdefault(key, item)
        self._stop_event = asyncio.Event()
        if self._stop:
            self._stop_event.set()
        pending = list(todo.items())
        step = max(1, int(self.teacher.max_batch))
        chunks = [pending[i:i + step] for i in range(0, len(pending), step)]
        senders = min(self.concurrency, len(chunks))
        ready: asyncio.Queue[list[Reserved] | None] = asyncio.Queue(maxsize=max(1, self.concurrency))
        self._writes = []
        self._rejections.clear()
        tasks = [asyncio.ensure_future(self._reserve_ahead(chunks, ready, outcomes, senders))]
        tasks += [asyncio.ensure_future(self._sender(ready, outcomes)) for _ in range(senders)]
        try:
            await asyncio.gather(*tasks)
            await asyncio.gather(*self._writes)
        except BaseException:  # Ctrl-C, or the ledger cannot write (disk full): stop the other
            for t in tasks:  # tasks before raising, so none is left running on a closed loop
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            while not ready.empty():  # reserved, never handed to a sender: give the charge back
                self._release_unsent(ready.get_nowait() or [], "interrupted before it was sent")
            await asyncio.gather(*self._writes, return_exceptions=True)  # replies that arrived
            raise
        return [outcomes[k] for k in keys]

    @staticmethod
    def _cached(key: str, rec: CallRecord) -> Outcome:
        return Outcome(DELIVERED, rec.response, rec.data, True, problem=rec.problem, key=key)

    def _set_stop(self, message: str) -> None:
        if self._stop is None:
            self._stop = message
        if self._stop_event is not None:
            self._stop_event.set()

    @property
    def _budget_stop(self) -> bool:
        return bool(self._stop and self._stop.startswith("teacher budget"))

    async def _reserve_ahead(self, chunks: list[list[tuple[str, tuple[TeacherRequest, Tags]]]],
                             ready: "asyncio.Queue[list[Reserved] | None]",
                             outcomes: dict[str, Outcome], senders: int) -> None:
        """Reserve the chunks in the ledger one window (``concurrency`` chunks, one group commit)
        ahead of the senders, so a sender that gets a reply starts its next request at once."""
        window = max(1, self.concurrency)
        for i in range(0, len(chunks), window):
            group = chunks[i:i + window]
            if self._stop:
                self._record_unsent([Reserved(key, req, tags) for chunk in group
                                     for key, (req, tags) in chunk], outcomes)
                continue
            with self.ledger.transaction():
                reserved = [[self.ledger.reserve(key, tags, self._request_record(req),
                                                 self._estimate(req), self.teacher.teacher_id)
                             for key, (req, tags) in chunk] for chunk in group]
            sends = [self._sort_reservations(chunk, reservations, outcomes)
                     for chunk, reservations in zip(group, reserved)]
            for j, send in enumerate(sends):
                try:
                    if send:
                        await ready.put(send)
                except asyncio.CancelledError:  # interrupted: the rest of the window is unsent
                    for rest in sends[j:]:
                        self._release_unsent(rest, "interrupted before it was sent")
                    raise
        for _ in range(senders):
            await ready.put(None)

    def _sort_reservations(self, chunk: list[tuple[str, tuple[TeacherRequest, Tags]]],
                           reservations: list[Any], outcomes: dict[str, Outcome]) -> list[Reserved]:
        """Record cached and over-budget outcomes; return the requests to send."""
        send: list[Reserved] = []
        for (key, (req, tags)), r in zip(chunk, reservations):
            if r.outcome == "cached":  # delivered meanwhile by another process sharing the ledger
                outcomes[key] = self._cached(key, r.record)
            elif r.outcome == "exhausted":
                self._set_stop(f"teacher budget reached: {r.reason}. Requests not sent are "
                               "reported as budget_exhausted; raise the budget and run again "
                               "to continue (delivered answers are reused from the ledger).")
                outcomes[key] = Outcome(EXHAUSTED, error=f"{req.describe()}: {r.reason}")
            else:
                send.append(Reserved(key, req, tags, r.outcome == "new"))
        return send

    async def _sender(self, ready: "asyncio.Queue[list[Reserved] | None]",
                      outcomes: dict[str, Outcome]) -> None:
        """One concurrency slot: send reserved requests until the reserver says there are no more."""
        while (send := await ready.get()) is not None:
            if self._stop and not self._budget_stop:
                self._record_unsent(send, outcomes)
            else:
                await self._send(send, outcomes)

    def _release_unsent(self, items: list[Reserved], why: str) -> None:
        """Dead letters for reserved requests that were never sent; their charge is given back."""
        for r in items:
            self.ledger.fail(r.key, f"{r.request.describe()}: {why}", release=r.new, tags=r.tags,
                             request=self._request_record(r.request),
                             billing=f"not billed: {why}")

    def _record_unsent(self, items: list[Reserved], outcomes: dict[str, Outcome]) -> None:
        """Requests a stop kept from being sent: budget_exhausted (no row), or failed dead
        letters that give back the charge their reservation just made."""
        status = EXHAUSTED if self._budget_stop else FAILED
        with self.ledger.transaction():
            for r in items:
                msg = f"{r.request.describe()}: not sent, the batch stopped ({self._stop})"
                outcomes[r.key] = Outcome(status, error=msg)
                if status == FAILED:
                    self.ledger.fail(r.key, msg, release=r.new, tags=r.tags,
                                     request=self._request_record(r.request),
                                     billing="not billed: not sent, the batch stopped")

    async def _send(self, send: list[Reserved], outcomes: dict[str, Outcome]) -> None:
        reqs = [r.request for r in send]
        if self._rpm:
            await self._rpm.acquire(len(reqs))
        if self._tpm:
            await self._tpm.acquire(sum(self._estimate(r) for r in reqs))
        start, track = time.monotonic(), _Attempts()
        try:
            responses = await self._attempt_until_done(send, outcomes, track)
        except asyncio.CancelledError:  # Ctrl-C: charged only if an attempt can have been billed
            self._fail(send, f"interrupted (after {track.count} attempt(s))", track.count,
                       release=track.billed is None, outcomes=outcomes,
                       billing=track.billed or "not billed: interrupted before it was sent")
            raise
        if responses is None:
            return
        if track.used != (0, 0):  # usage of the empty draws before this one: billed too
            responses[0].prompt_tokens += track.used[0]
            responses[0].completion_tokens += track.used[1]
        latency = (time.monotonic() - start) / len(reqs)
        self._unwritten += [(r, resp, latency, track.count) for r, resp in zip(send, responses)]
        if len(self._unwritten) == len(send):  # the first unwritten reply schedules the commit
            self._writes.append(asyncio.ensure_future(self._record_delivered(outcomes)))

    async def _attempt_until_done(self, send: list[Reserved], outcomes: dict[str, Outcome],
                                  track: "_Attempts") -> list[TeacherResponse] | None:
        """Send with retries; the replies, or None once the failure is recorded."""
        reqs = [r.request for r in send]
        last: CallError | None = None
        while True:
            await self._sleep(self._gate.cap(self._gate.wait_s()))  # the batch waits out an outage together
            if self._stop and not self._budget_stop:  # stopped while this request waited
                why = f"{last} (after {track.count} attempt(s))" if last else "not sent"
                self._fail(send, f"{why}; the batch stopped ({self._stop})", track.count,
                           release=track.billed is None, outcomes=outcomes,
                           billing=track.billed or (last.billing if last else "not billed: not sent"))
                return None
            track.count += 1
            try:
                responses = await self.teacher.complete(reqs)
            except asyncio.CancelledError:  # interrupted with the request on its way: unknown
                track.billed = track.billed or "possibly billed: interrupted while in flight"
                raise
            except CallError as e:
                last = e
            except TeacherError as e:  # e.g. a recorded teacher with no record: never invent one
                last = CallError(str(e), billing="not billed: the teacher has no answer for it")
            except Exception as e:  # anything else a back-end raises: a dead letter, never a lost row
                last = CallError(f"{type(e).__name__}: {e}", maybe_billed=True,
                                 billing=f"possibly billed: the back-end raised {type(e).__name__}")
            else:
                self._gate.answered()
                if self._retry_empty(responses, track.count):  # sampling: another draw may differ
                    track.used = (track.used[0] + responses[0].prompt_tokens,
                                  track.used[1] + responses[0].completion_tokens)
                    continue
                return responses
            if last.maybe_billed and track.billed is None:
                track.billed = last.billing or "possibly billed"
            self._note_failure(last, track.count)
            out_of_retries = track.count > self.retry.max_retries
            if not last.retryable or out_of_retries or self._stop:
                self._fail(send, f"{last} (after {track.count} attempt(s))", track.count,
                           release=track.billed is None, outcomes=outcomes,
                           billing=track.billed or last.billing)
                return None
            delay = self.retry.delay(track.count - 1, last.retry_after)
            if last.outage or last.rate_limited:
                self._gate.hold(delay)
            await self._sleep(self._gate.cap(delay))

    def _retry_empty(self, responses: list[TeacherResponse], attempts: int) -> bool:
        """Whether to ask again after an empty reply: only when sampling (temperature > 0), one
        request at a time, within the retry limit. At temperature 0 the reply would not change."""
        return (self.temperature > 0 and len(responses) == 1 and attempts <= self.retry.max_retries
                and _problem(responses[0]) is not None)

    def _note_failure(self, err: CallError, attempts: int) -> None:
        """Turn a failed attempt into a stop of the whole batch when no request can succeed."""
        resume = "delivered answers are reused from the ledger and only the missing requests are sent"
        if err.outage:
            self._gate.failed()
            if self._gate.expired:
                self._set_stop(
                    f"the teacher has answered nothing for {self._gate.down_for():.0f} s "
                    f"(teacher.max_outage_s = {self.max_outage_s:g}); last error: {err}. Failed "
                    "requests that cannot have been billed were not charged. Start the server or "
                    f"fix teacher.base_url, then run the same command with --resume: {resume}.")
        if err.stop:
            self._set_stop(f"the teacher refused the request ({err}); fix the cause and run the "
                           f"same command with --resume: {resume}.")
        if err.systematic:
            self._rejections[err.message] += 1
            if self._rejections[err.message] >= SYSTEMATIC_STOP_AFTER:
                self._set_stop(f"{err} ({self._rejections[err.message]} requests were rejected "
                               "the same way, none was charged). Fix the configuration and run "
                               f"the same command with --resume: {resume}.")
        if err.rate_limited and attempts > self.retry.max_retries:
            self._set_stop(f"the teacher's rate limit did not lift ({err} after {attempts} "
                           "attempts). Delivered answers are kept in the ledger and the rest "
                           "are recorded as failed, not charged; wait for the limit to reset (or "
                           "lower teacher.concurrency / requests_per_minute) and run the same "
                           "command with --resume: only the missing requests are sent.")

    async def _record_delivered(self, outcomes: dict[str, Outcome]) -> None:
        """Commit the replies that arrived together in one transaction; the batch returns only
        after every delivery is committed, and the senders never wait for it."""
        await asyncio.sleep(0)
        delivered, self._unwritten = self._unwritten, []
        try:
            with self.ledger.transaction():
                for r, resp, latency, attempts in delivered:
                    self.ledger.complete(r.key, resp.text, self._response_data(resp),
                                         resp.prompt_tokens, resp.completion_tokens, latency,
                                         attempts, _problem(resp))
        except BaseException as e:  # e.g. disk full: send nothing more, then raise
            self._set_stop(f"the ledger could not record the teacher's replies ({e})")
            raise
        for r, resp, _, _ in delivered:
            if self.top_logprobs and resp.logprobs is None:
                self.missing_logprobs += 1
            outcomes[r.key] = Outcome(DELIVERED, resp.text, self._response_data(resp),
                                      problem=_problem(resp), key=r.key)

    def _fail(self, send: list[Reserved], error: str, attempts: int, release: bool,
              outcomes: dict[str, Outcome], billing: str | None = None) -> None:
        with self.ledger.transaction():
            for r in send:
                msg = f"{r.request.describe()}: {error}"
                outcomes[r.key] = Outcome(FAILED, error=msg, key=r.key)
                self.ledger.fail(r.key, msg, attempts, release and r.new, billing=billing)

    async def _sleep(self, delay: float) -> None:
        """Wait ``delay`` seconds, waking early when the batch is stopped."""
        assert self._stop_event is not None
        if delay <= 0 or self._stop_event.is_set():
            return
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


def _problem(resp: TeacherResponse) -> str | None:
    """Why a delivered reply cannot be used, or None."""
    if resp.data is None and not (resp.text or "").strip():
        return EMPTY_REPLY
    return None
