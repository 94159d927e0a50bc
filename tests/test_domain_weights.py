"""DDK weight updates (Eq. 1, Eq. 2) and the resumable domain sampler."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from domdistill.data.mixture import DomainSampler
from domdistill.training.domain_weights import (discrepancy_factor, doremi_update, smoothed_update,
                                                uniform)

ppl_st = st.dictionaries(st.sampled_from(list("abcdefgh")), st.floats(1.0, 500.0),
                         min_size=2, max_size=8)


def test_eq1_is_softmax_of_ratios_directly():
    s, t = {"a": 12.0, "b": 6.0, "c": 3.0}, {"a": 6.0, "b": 6.0, "c": 3.0}
    r = discrepancy_factor(s, t)
    z = math.exp(2) + math.exp(1) + math.exp(1)
    assert math.isclose(r["a"], math.exp(2) / z) and math.isclose(r["b"], math.exp(1) / z)


def test_eq2_matches_formula_and_keeps_uniform_floor():
    prev = {"a": 0.7, "b": 0.2, "c": 0.1}
    s, t = {"a": 10.0, "b": 30.0, "c": 8.0}, {"a": 10.0, "b": 10.0, "c": 4.0}
    r = smoothed_update(prev, s, t, alpha=0.5)
    psi = {d: prev[d] * math.exp(s[d] / t[d]) for d in prev}
    z = sum(psi.values())
    for d in prev:
        assert math.isclose(r[d], 0.5 * psi[d] / z + 0.5 / 3, rel_tol=1e-12)
        assert r[d] >= 0.5 / 3


@settings(max_examples=100, deadline=None)
@given(ppl_st, st.floats(0.0, 1.0))
def test_updates_are_distributions_even_for_large_ratios(ppl, alpha):
    teacher = {d: 1.0 for d in ppl}  # ratios up to 500: exp would overflow outside log space
    for r in (discrepancy_factor(ppl, teacher), smoothed_update(uniform(ppl), ppl, teacher, alpha),
              doremi_update(uniform(ppl), ppl, teacher)):
        assert math.isclose(sum(r.values()), 1.0, rel_tol=1e-9)
        assert all(v >= 0 and math.isfinite(v) for v in r.values())
    worst = max(ppl, key=ppl.get)
    r = discrepancy_factor(ppl, teacher)
    assert r[worst] == max(r.values())


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(list("abcdef")), st.integers(1, 40), min_size=1, max_size=6),
       st.integers(1, 200), st.integers(0, 5), st.sampled_from(["categorical", "largest_remainder"]))
def test_sampler_resume_draws_the_same(sizes, n, cut, mode):
    weights = uniform(sizes)
    full = DomainSampler(sizes, weights, seed=3, mode=mode)
    draws = [full.next_interval(n) for _ in range(6)]
    part = DomainSampler(sizes, weights, seed=3, mode=mode)
    for _ in range(cut):
        part.next_interval(n)
    resumed = DomainSampler.from_state(part.state_dict())
    assert [resumed.next_interval(n) for _ in range(6 - cut)] == draws[cut:]
    for interval in draws:
        assert len(interval) == n and all(0 <= i < sizes[d] for d, i in interval)


def test_sampler_cycles_exhausted_domain_and_follows_weights():
    s = DomainSampler({"big": 100, "tiny": 3}, {"big": 0.5, "tiny": 0.5}, seed=0,
                      mode="largest_remainder")
    slots = s.next_interval(20)
    tiny = [i for d, i in slots if d == "tiny"]
    assert len(tiny) == 10 and set(tiny) == {0, 1, 2}  # reused cyclically
    assert s.epoch["tiny"] >= 3
