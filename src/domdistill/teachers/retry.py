"""The one retry layer (jittered exponential backoff that honours Retry-After), request/token
rate limits, and secret redaction for error text."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """``max_retries`` extra attempts after the first; the n-th wait is uniform in
    ``[0, min(max_s, base_s * 2**n)]`` (full jitter) unless the server says Retry-After."""

    max_retries: int = 6
    base_s: float = 1.0
    max_s: float = 60.0
    max_retry_after_s: float = 600.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None and retry_after >= 0:
            return min(retry_after, self.max_retry_after_s)
        return random.uniform(0, min(self.max_s, self.base_s * 2 ** attempt))


class OutageGate:
    """The shared backoff of one batch. A failure that says the teacher is down or rate-limited
    holds every sender until ``open_at``, so a server that is down sees a trickle of probes, not
    ``concurrency`` retry loops; ``down_for()`` is how long the teacher has answered nothing."""

    def __init__(self, max_outage_s: float | None = None):
        self.max_outage_s = max_outage_s
        self.open_at = 0.0
        self.down_since: float | None = None

    def hold(self, delay: float) -> None:
        self.open_at = max(self.open_at, time.monotonic() + delay)

    def failed(self) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()

    def answered(self) -> None:
        self.down_since = None

    def wait_s(self) -> float:
        return max(0.0, self.open_at - time.monotonic())

    def down_for(self) -> float:
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since

    @property
    def expired(self) -> bool:
        return self.max_outage_s is not None and self.down_for() >= self.max_outage_s

    def cap(self, delay: float) -> float:
        """``delay``, shortened so that a sender wakes when the outage window closes."""
        if self.max_outage_s is None or self.down_since is None or delay <= 0:
            return delay
        return max(0.01, min(delay, self.max_outage_s - self.down_for() + 0.01))


class RateLimiter:
    """Token bucket: at most ``per_minute`` units per minute, bursts up to ``burst_s`` seconds' worth."""

    def __init__(self, per_minute: float, burst_s: float = 1.0):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self, amount: float = 1.0) -> None:
        amount = min(amount, self.capacity)  # one large request may use a full bucket
        async with self._lock:
            while True:
                now = time.monotonic()
                self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.level >= amount:
                    self.level -= amount
                    return
                await asyncio.sleep((amount - self.level) / self.rate)
