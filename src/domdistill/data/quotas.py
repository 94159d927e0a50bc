"""Per-stage, per-domain teacher-call quotas for BalDistill and its baselines.

Policies (``methods.md`` section 1.3):

- ``random``: proportional to what is left in the pool (the expectation of random sampling).
- ``naive``: the same share for every domain, ``B / (K * l)``.
- ``adaptive``: ``(n_d / N) * (B/K) * (K - i)/K + B/(K*l) * i/K``, moving from random towards
  balanced as the stage index ``i`` grows (``paper``: i = 1..K, the last stage fully balanced;
  ``code``: i = 0..K-1, the authors' released code).
- ``duplicate``: naive quotas; the caller fills tail domains by repeating real inputs.

All quotas are integers that sum exactly to the stage budget (largest-remainder rounding, ties
broken by domain order). A domain is *tail* in a stage when its quota exceeds what remains of it
in the pool; the shortfall is synthesized by the teacher (or duplicated).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Policy = Literal["random", "naive", "adaptive", "duplicate"]
POLICIES: tuple[str, ...] = ("random", "naive", "adaptive", "duplicate")


def largest_remainder(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Integers proportional to ``weights`` that sum exactly to ``total``."""
    if total < 0:
        raise ValueError("total must be >= 0")
    keys = list(weights)
    mass = sum(max(w, 0.0) for w in weights.values())
    if not keys or total == 0:
        return {k: 0 for k in keys}
    if mass <= 0:
        weights, mass = {k: 1.0 for k in keys}, float(len(keys))
    # rounded so that float noise (435.4000000001 vs 435.3999999999) cannot decide a tie
    exact = {k: round(total * max(weights[k], 0.0) / mass, 9) for k in keys}
    out = {k: math.floor(exact[k]) for k in keys}
    left = total - sum(out.values())
    order = sorted(range(len(keys)), key=lambda j: (-(exact[keys[j]] - out[keys[j]]), j))
    for j in order[:left]:
        out[keys[j]] += 1
    return out


def stage_budgets(total: int, stages: int) -> list[int]:
    """Split the total budget over stages, as evenly as possible, summing exactly to ``total``."""
    if stages <= 0 or total < stages:
        raise ValueError(f"need 1 <= stages <= budget, got stages={stages}, budget={total}")
    base, extra = divmod(total, stages)
    return [base + (1 if s < extra else 0) for s in range(stages)]


def stage_quotas(policy: Policy, stage_budget: int, stage: int, stages: int,
                 pool: Mapping[str, int], original: Mapping[str, int],
                 indexing: Literal["paper", "code"] = "paper") -> dict[str, int]:
    """Quota per domain for ``stage`` (1-based) of ``stages``.

    ``pool`` is what remains unannotated per domain now; ``original`` the full pool sizes n_d.
    """
    domains = list(original)
    if policy == "random":
        return largest_remainder({d: pool.get(d, 0) for d in domains}, stage_budget)
    if policy in ("naive", "duplicate"):
        return largest_remainder({d: 1.0 for d in domains}, stage_budget)
    if policy == "adaptive":
        i = stage if indexing == "paper" else stage - 1
        n_total = sum(original.values())
        lam = i / stages
        weights = {d: (1 - lam) * original[d] / n_total + lam / len(domains) for d in domains}
        return largest_remainder(weights, stage_budget)
    raise ValueError(f"unknown balancing policy {policy!r} (choose from {', '.join(POLICIES)})")


@dataclass
class StagePlan:
    """What one stage will ask of the teacher, domain by domain."""

    stage: int
    budget: int
    quotas: dict[str, int]
    available: dict[str, int]
    head: list[str] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)

    @property
    def real(self) -> dict[str, int]:
        """Real inputs annotated per domain (all that is left for tail domains)."""
        return {d: min(q, self.available.get(d, 0)) for d, q in self.quotas.items()}

    @property
    def shortfall(self) -> dict[str, int]:
        """Examples per tail domain that must be synthesized (or duplicated)."""
        return {d: self.quotas[d] - self.available.get(d, 0) for d in self.tail}

    def to_dict(self) -> dict:
        return {"stage": self.stage, "budget": self.budget, "quotas": self.quotas,
                "head": self.head, "tail": self.tail, "shortfall": self.shortfall}


def plan_stage(policy: Policy, stage_budget: int, stage: int, stages: int,
               pool: Mapping[str, int], original: Mapping[str, int],
               indexing: Literal["paper", "code"] = "paper") -> StagePlan:
    """Quotas for one stage with the head/tail split against the current pool."""
    q = stage_quotas(policy, stage_budget, stage, stages, pool, original, indexing)
    tail = [d for d in q if q[d] > pool.get(d, 0)]
    head = [d for d in q if d not in tail]
    return StagePlan(stage, stage_budget, q, {d: pool.get(d, 0) for d in q}, head, tail)


def plan_run(policy: Policy, budget: int, stages: int, counts: Mapping[str, int],
             indexing: Literal["paper", "code"] = "paper") -> list[StagePlan]:
    """Every stage's plan, assuming annotated inputs leave the pool (as they do)."""
    pool = dict(counts)
    plans = []
    for s, b in enumerate(stage_budgets(budget, stages), start=1):
        plan = plan_stage(policy, b, s, stages, pool, counts, indexing)
        for d, n in plan.real.items():
            pool[d] -= n
        plans.append(plan)
    return plans
