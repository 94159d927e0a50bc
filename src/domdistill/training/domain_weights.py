"""DDK's domain re-weighting (``methods.md`` section 2.2), computed in log space.

- Discrepancy factor (Eq. 1): ``r = softmax(ppl_student / ppl_teacher)`` over domains.
- Smoothed update (Eq. 2): ``psi = r_prev * exp(ratio)``; ``r = alpha * psi / sum(psi) + (1 - alpha) / N``.
- ``alpha = 1`` without a previous ``r`` reduces to Eq. 1 (DDK without factor smoothing);
  ``uniform`` weights are DDK-ES; a DoReMi-style update uses the clipped excess log-perplexity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

Weights = dict[str, float]


def _softmax(logits: Mapping[str, float]) -> Weights:
    m = max(logits.values())
    exp = {d: math.exp(v - m) for d, v in logits.items()}
    z = sum(exp.values())
    return {d: v / z for d, v in exp.items()}


def perplexity_ratios(student_ppl: Mapping[str, float], teacher_ppl: Mapping[str, float]) -> Weights:
    """``ppl_S / ppl_T`` per domain (the domain discrepancy)."""
    missing = set(student_ppl) ^ set(teacher_ppl)
    if missing:
        raise ValueError(f"student and teacher perplexities cover different domains: {sorted(missing)}")
    return {d: student_ppl[d] / teacher_ppl[d] for d in student_ppl}


def discrepancy_factor(student_ppl: Mapping[str, float], teacher_ppl: Mapping[str, float]) -> Weights:
    """Eq. 1: a softmax over domains of the student/teacher perplexity ratio."""
    return _softmax(perplexity_ratios(student_ppl, teacher_ppl))


def smoothed_update(previous: Mapping[str, float], student_ppl: Mapping[str, float],
                    teacher_ppl: Mapping[str, float], alpha: float = 0.5) -> Weights:
    """Eq. 2: multiplicative update of the previous factor, mixed with uniform by ``1 - alpha``."""
    ratios = perplexity_ratios(student_ppl, teacher_ppl)
    logits = {d: math.log(max(previous[d], 1e-300)) + ratios[d] for d in ratios}
    psi = _softmax(logits)
    n = len(psi)
    return {d: alpha * psi[d] + (1 - alpha) / n for d in psi}


def doremi_update(previous: Mapping[str, float], student_ppl: Mapping[str, float],
                  teacher_ppl: Mapping[str, float], eta: float = 1.0, smoothing: float = 1e-3) -> Weights:
    """DoReMi-style step with the teacher as reference: clipped excess loss ``log ppl_S - log ppl_T``."""
    excess = {d: max(math.log(student_ppl[d]) - math.log(teacher_ppl[d]), 0.0) for d in student_ppl}
    logits = {d: math.log(max(previous[d], 1e-300)) + eta * excess[d] for d in excess}
    w = _softmax(logits)
    n = len(w)
    return {d: (1 - smoothing) * w[d] + smoothing / n for d in w}


def uniform(domains) -> Weights:
    domains = list(domains)
    return {d: 1.0 / len(domains) for d in domains}


def natural(counts: Mapping[str, int]) -> Weights:
    total = sum(counts.values())
    return {d: n / total for d, n in counts.items()}
