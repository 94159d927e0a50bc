"""Domain statistics, head/tail, Zipf resampling and stratified splits."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domdistill.data.domains import (
    domain_stats, split_head_tail, stratified_split, zipf_resample, zipf_sizes,
)
from domdistill.data.example import DomainDataset, DomainExample
from domdistill.data.loaders import load_dataset
from domdistill.errors import InputError

# the BalDistill authors' Zipf(1.1) MATH pool (baldistill-teacher/math/corpus.jsonl)
AUTHORS_POOL = {"algebra": 1744, "intermediate_algebra": 763, "prealgebra": 561, "geometry": 349,
                "number_theory": 290, "counting_and_probability": 231, "precalculus": 187}


@pytest.fixture(scope="module")
def math_train(shared_data: Path) -> DomainDataset:
    return load_dataset(shared_data / "math" / "MATH.tar.gz", split="train")


def make(counts: dict[str, int]) -> DomainDataset:
    return DomainDataset([DomainExample(f"{d}-{i}", d, f"text {d} {i}", d)
                          for d, n in counts.items() for i in range(n)], "toy")


def test_stats_on_r52(shared_data: Path) -> None:
    st_ = domain_stats(load_dataset(shared_data / "reuters-r52" / "r52-train.txt"), head_share=0.8)
    assert (st_.total, st_.max, st_.min, st_.imbalance_ratio) == (6532, 2840, 1, 2840)
    assert list(st_.counts)[:2] == ["earn", "acq"] and list(st_.counts)[-1] == "platinum"
    # head: fewest largest topics holding >= 80% of documents
    head_n = sum(st_.counts[d] for d in st_.head)
    assert head_n >= 0.8 * 6532 and head_n - st_.counts[st_.head[-1]] < 0.8 * 6532
    assert set(st_.head) | set(st_.tail) == set(st_.counts) and not set(st_.head) & set(st_.tail)
    assert abs(sum(st_.shares().values()) - 1) < 1e-9


def test_split_head_tail_by_quota_and_share() -> None:
    counts = {"a": 100, "b": 50, "c": 49, "d": 1}
    assert split_head_tail(counts, quota=50) == (["a", "b"], ["c", "d"])
    assert split_head_tail(counts, share=0.5) == (["a"], ["b", "c", "d"])
    assert split_head_tail(counts, share=0.51) == (["a", "b"], ["c", "d"])
    assert split_head_tail(counts, share=1.0) == (["a", "b", "c", "d"], [])
    with pytest.raises(InputError, match="exactly one"):
        split_head_tail(counts)
    with pytest.raises(InputError, match="share"):
        split_head_tail(counts, share=1.5)
    assert domain_stats(counts, head_quota=50).tail == ["c", "d"]
    assert domain_stats(counts).head == []


def test_zipf_math_is_long_tailed_and_seeded(math_train: DomainDataset) -> None:
    pool = zipf_resample(math_train, alpha=1.1, seed=0)
    sizes = list(pool.counts().values())
    assert list(pool.counts()) == list(math_train.counts())  # ranking kept
    assert all(a > b for a, b in zip(sizes, sizes[1:]))  # strictly decreasing by rank
    assert sizes[0] == 1744  # the largest domain keeps its size
    assert abs(sizes[0] / sizes[-1] - 7 ** 1.1) / 7 ** 1.1 < 0.01
    # each domain drawn without replacement from that domain
    assert len({e.id for e in pool}) == len(pool)
    source = {e.id: e.domain for e in math_train}
    assert all(source[e.id] == e.domain for e in pool)
    again = zipf_resample(math_train, alpha=1.1, seed=0)
    other = zipf_resample(math_train, alpha=1.1, seed=1)
    assert [e.id for e in again] == [e.id for e in pool]
    assert [e.id for e in other] != [e.id for e in pool]
    assert other.counts() == pool.counts()


def test_zipf_sizes_close_to_authors_pool(math_train: DomainDataset) -> None:
    ours = zipf_sizes(math_train.counts(), 1.1)
    assert list(ours) == list(AUTHORS_POOL)
    for domain, n in AUTHORS_POOL.items():
        assert abs(ours[domain] - n) / n <= 0.10, domain
    assert abs(sum(ours.values()) - sum(AUTHORS_POOL.values())) / 4125 < 0.03
    capped = zipf_sizes({"a": 10, "b": 9, "c": 1}, 0.5, largest=100)
    assert capped == {"a": 10, "b": 7, "c": 1}  # n1 capped at 10; c capped at its size
    with pytest.raises(InputError, match="alpha"):
        zipf_sizes({"a": 3}, 0)


def test_stratified_split_per_domain(math_train: DomainDataset) -> None:
    train, val, test = stratified_split(math_train, 0.2, 0.1, seed=5)
    assert len(train) + len(val) + len(test) == len(math_train)
    ids = [{e.id for e in part} for part in (train, val, test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    for domain, n in math_train.counts().items():
        assert test.counts()[domain] == round(n * 0.2)
        assert val.counts()[domain] == round(n * 0.1)
    again = stratified_split(math_train, 0.2, 0.1, seed=5)[2]
    assert [e.id for e in again] == [e.id for e in test]
    assert [e.id for e in stratified_split(math_train, 0.2, 0.1, seed=6)[2]] != \
        [e.id for e in test]


def test_stratified_split_small_domains() -> None:
    ds = make({"big": 10, "two": 2, "one": 1})
    train, val, test = stratified_split(ds, 0.2, 0.2, seed=0)
    assert train.counts()["one"] == 1 and "one" not in test.counts()  # 1 example: train only
    assert train.counts()["two"] == 1 and test.counts()["two"] == 1 and "two" not in val.counts()
    assert (train.counts()["big"], val.counts()["big"], test.counts()["big"]) == (6, 2, 2)
    train, _, test = stratified_split(ds, 0.5, min_train=2)
    assert train.counts()["two"] == 2 and test.counts()["big"] == 5
    with pytest.raises(InputError, match="test_fraction"):
        stratified_split(ds, 0.6, 0.5)


@settings(max_examples=60, deadline=None)
@given(counts=st.dictionaries(st.sampled_from("abcdefgh"), st.integers(1, 40), min_size=1),
       test_fraction=st.floats(0.05, 0.6), seed=st.integers(0, 10))
def test_stratified_split_properties(counts: dict[str, int], test_fraction: float,
                                     seed: int) -> None:
    ds = make(counts)
    train, val, test = stratified_split(ds, test_fraction, seed=seed)
    assert len(val) == 0 and len(train) + len(test) == len(ds)
    for d, n in counts.items():
        assert train.counts().get(d, 0) >= 1  # every domain keeps a training example
        if n >= 2:
            assert test.counts().get(d, 0) >= 1  # and is tested when it can spare one


@settings(max_examples=40, deadline=None)
@given(counts=st.dictionaries(st.sampled_from("abcdefgh"), st.integers(1, 60), min_size=1),
       alpha=st.floats(0.3, 2.5), seed=st.integers(0, 5))
def test_zipf_resample_properties(counts: dict[str, int], alpha: float, seed: int) -> None:
    ds = make(counts)
    pool = zipf_resample(ds, alpha, seed=seed)
    got = pool.counts()
    assert set(got) == set(counts)
    assert all(1 <= got[d] <= counts[d] for d in counts)
    assert got == zipf_sizes(counts, alpha)
    assert [e.id for e in pool] == [e.id for e in ds if e.id in {p.id for p in pool}]  # order kept
