"""A resumable domain sampler: each interval's composition is drawn from the current weights.

Every domain has its own seeded shuffled order; a domain that runs out is reshuffled and reused
(the DDK paper's cyclic reuse). The whole state (weights, positions, epochs, RNG) is a plain dict
that goes into training checkpoints, so a resumed run draws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, Literal

from domdistill.data.quotas import largest_remainder


class DomainSampler:
    """Draws item indices per domain according to weights, cycling exhausted domains."""

    def __init__(self, sizes: Mapping[str, int], weights: Mapping[str, float], seed: int = 0,
                 mode: Literal["categorical", "largest_remainder"] = "categorical"):
        empty = [d for d, n in sizes.items() if n <= 0]
        if empty:
            raise ValueError(f"domains with no training data: {', '.join(sorted(empty))}")
        self.sizes = dict(sizes)
        self.weights = dict(weights)
        self.seed = seed
        self.mode = mode
        self.position = {d: 0 for d in sizes}
        self.epoch = {d: 0 for d in sizes}
        self.intervals = 0
        self._orders: dict[str, list[int]] = {}

    def _order(self, domain: str) -> list[int]:
        key = f"{domain}#{self.epoch[domain]}"
        if key not in self._orders:
            order = list(range(self.sizes[domain]))
            random.Random(f"{self.seed}:{key}").shuffle(order)
            self._orders = {k: v for k, v in self._orders.items() if k.split("#")[0] != domain}
            self._orders[key] = order
        return self._orders[key]

    def _take(self, domain: str) -> int:
        if self.position[domain] >= self.sizes[domain]:
            self.position[domain] = 0
            self.epoch[domain] += 1
        item = self._order(domain)[self.position[domain]]
        self.position[domain] += 1
        return item

    def set_weights(self, weights: Mapping[str, float]) -> None:
        if set(weights) != set(self.sizes):
            raise ValueError("weights must cover exactly the sampler's domains")
        self.weights = dict(weights)

    def composition(self, n: int) -> dict[str, int]:
        """How many of the next ``n`` slots each domain gets."""
        domains = list(self.sizes)
        if self.mode == "largest_remainder":
            return largest_remainder({d: self.weights[d] for d in domains}, n)
        rng = random.Random(f"{self.seed}:interval:{self.intervals}")
        drawn = rng.choices(domains, weights=[self.weights[d] for d in domains], k=n)
        return {d: drawn.count(d) for d in domains}

    def next_interval(self, n: int) -> list[tuple[str, int]]:
        """The next interval's ``n`` (domain, item index) pairs, shuffled."""
        counts = self.composition(n)
        slots = [(d, self._take(d)) for d in self.sizes for _ in range(counts[d])]
        random.Random(f"{self.seed}:shuffle:{self.intervals}").shuffle(slots)
        self.intervals += 1
        return slots

    def state_dict(self) -> dict[str, Any]:
        return {"sizes": self.sizes, "weights": self.weights, "seed": self.seed, "mode": self.mode,
                "position": self.position, "epoch": self.epoch, "intervals": self.intervals}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "DomainSampler":
        s = cls(state["sizes"], state["weights"], state["seed"], state["mode"])
        s.position = dict(state["position"])
        s.epoch = dict(state["epoch"])
        s.intervals = int(state["intervals"])
        return s

