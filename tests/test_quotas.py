"""Quota policies: exact sums, the adaptive shift toward balance, head/tail split."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from domdistill.data.quotas import (largest_remainder, plan_run, plan_stage, stage_budgets,
                                    stage_quotas)

counts_st = st.dictionaries(st.text("abcdefgh", min_size=1, max_size=4),
                            st.integers(1, 3000), min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(counts_st, st.integers(1, 20), st.integers(1, 6000),
       st.sampled_from(["random", "naive", "adaptive", "duplicate"]),
       st.sampled_from(["paper", "code"]))
def test_quotas_sum_to_stage_budget(counts, stages, budget, policy, indexing):
    stages = min(stages, budget)
    plans = plan_run(policy, budget, stages, counts, indexing)
    assert [p.budget for p in plans] == stage_budgets(budget, stages)
    assert sum(p.budget for p in plans) == budget
    for p in plans:
        assert sum(p.quotas.values()) == p.budget
        assert all(q >= 0 for q in p.quotas.values())
        assert set(p.head) | set(p.tail) == set(counts) and not set(p.head) & set(p.tail)
        for d in p.tail:
            assert p.quotas[d] > p.available[d] and p.shortfall[d] == p.quotas[d] - p.available[d]
        for d in p.head:
            assert p.quotas[d] <= p.available[d]
    # annotated real inputs never exceed the pool
    used = {d: sum(p.real[d] for p in plans) for d in counts}
    assert all(used[d] <= counts[d] for d in counts)


@settings(max_examples=100, deadline=None)
@given(counts_st, st.integers(2, 10), st.integers(100, 5000))
def test_adaptive_moves_monotonically_toward_balanced(counts, stages, stage_budget):
    def distance(q):  # L1 distance from the balanced quota vector
        bal = stage_budget / len(counts)
        return sum(abs(v - bal) for v in q.values())
    dist = [distance(stage_quotas("adaptive", stage_budget, i, stages, counts, counts))
            for i in range(1, stages + 1)]
    # rounding moves each quota by < 1, so allow len(counts) slack per comparison
    assert all(b <= a + len(counts) for a, b in zip(dist, dist[1:]))
    assert dist[-1] <= len(counts)  # the last paper-indexed stage is fully balanced
    first = stage_quotas("adaptive", stage_budget, 1, stages, counts, counts, indexing="code")
    assert first == largest_remainder(counts, stage_budget)  # code indexing starts at random


def test_adaptive_formula_matches_paper_example():
    counts = {"earn": 900, "acq": 90, "tin": 10}
    q = stage_quotas("adaptive", 100, 1, 4, counts, counts)
    exact = {d: (n / 1000) * 100 * 3 / 4 + 100 / 3 * 1 / 4 for d, n in counts.items()}
    assert sum(q.values()) == 100
    assert all(abs(q[d] - exact[d]) < 1 for d in counts)


def test_head_tail_split_against_pool():
    counts = {"earn": 500, "tin": 3, "tea": 0}
    p = plan_stage("naive", 30, 1, 1, counts, counts)
    assert p.quotas == {"earn": 10, "tin": 10, "tea": 10}
    assert p.head == ["earn"] and p.tail == ["tin", "tea"]
    assert p.shortfall == {"tin": 7, "tea": 10} and p.real == {"earn": 10, "tin": 3, "tea": 0}


def test_largest_remainder_exact_and_fair():
    q = largest_remainder({"a": 1, "b": 1, "c": 1}, 10)
    assert sorted(q.values()) == [3, 3, 4] and sum(q.values()) == 10
    assert largest_remainder({"a": 0, "b": 0}, 3) == {"a": 2, "b": 1}
