"""Property tests: loaders and the config parser fail only with the project's own errors on any
input; quota and sampler invariants that tests/test_quotas.py and test_domain_weights.py leave out."""

from __future__ import annotations

import gzip
import json
import math
import tempfile
from collections import Counter
from pathlib import Path

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from domdistill.config import RunConfig, config_from_dict, load_config
from domdistill.data.example import DomainDataset
from domdistill.data.loaders import load_dataset
from domdistill.data.mixture import DomainSampler
from domdistill.data.quotas import largest_remainder, plan_run
from domdistill.errors import ConfigError, DomDistillError

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def load_bytes(raw: bytes, suffix: str, **kwargs) -> DomainDataset | DomDistillError:
    """Load ``raw`` written to a file named ``*suffix``; the project's error is a valid outcome."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"data{suffix}"
        path.write_bytes(gzip.compress(raw) if suffix.endswith(".gz") else raw)
        try:
            return load_dataset(path, **kwargs)
        except DomDistillError as err:
            assert str(path) in str(err)  # located
            return err


def check_dataset(ds: DomainDataset) -> None:
    assert len(ds) > 0
    for ex in ds:
        assert ex.domain.strip() and ex.input.strip() and isinstance(ex.answer, str)
    assert len({ex.id for ex in ds}) == len(ds)


# ---------------------------------------------------------------------------- loaders
@FAST
@given(st.binary(max_size=400), st.sampled_from([".jsonl", ".csv", ".txt", ".jsonl.gz", ".tsv"]))
def test_any_bytes_load_or_fail_with_a_located_input_error(raw, suffix):
    fmt = {".txt": "r52", ".tsv": "r52"}.get(suffix, "auto")
    out = load_bytes(raw, suffix, format=fmt)
    if isinstance(out, DomainDataset):
        check_dataset(out)


json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                          | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
record = st.dictionaries(st.sampled_from(["id", "domain", "input", "answer", "rationale", "x"]),
                         json_value | st.text(min_size=1, max_size=12), max_size=6)


@FAST
@given(st.lists(record | json_value, max_size=8), st.booleans())
def test_json_lines_of_any_shape_load_or_fail_cleanly(records, with_ids):
    raw = "\n".join(json.dumps(r) for r in records).encode()
    out = load_bytes(raw, ".jsonl", format="jsonl", fields={"id": "id"} if with_ids else None)
    if isinstance(out, DomainDataset):
        check_dataset(out)
        assert len(out) == sum(isinstance(r, dict) for r in records)


@FAST
@given(st.lists(st.tuples(st.text(max_size=6), st.text(max_size=20)), max_size=10),
       st.none() | st.lists(st.text("abc", min_size=1, max_size=2), max_size=4))
def test_label_text_files_respect_the_label_set(rows, label_set):
    raw = "\n".join(f"{a}\t{b}" for a, b in rows).encode()
    out = load_bytes(raw, ".txt", format="r52", label_set=label_set)
    if isinstance(out, DomainDataset):
        check_dataset(out)
        if label_set is not None:
            assert {ex.answer for ex in out} == set(label_set)  # inside, and none left empty


# ---------------------------------------------------------------------------- config
SECTIONS = {name: list(field.annotation.model_fields) for name, field in RunConfig.model_fields.items()}
config_key = st.sampled_from(sorted({k for keys in SECTIONS.values() for k in keys})) | st.text(max_size=6)
section = st.dictionaries(config_key, json_value, max_size=4)
raw_config = st.dictionaries(st.sampled_from(sorted(SECTIONS)) | st.text(max_size=5),
                             section | json_value, max_size=4)


@FAST
@given(raw_config | json_value)
def test_any_config_mapping_validates_or_is_a_config_error(raw):
    try:
        cfg = config_from_dict(raw, source="fuzz.yaml")
    except ConfigError as err:
        assert err.path == "fuzz.yaml" and str(err)
        return
    assert cfg.method.stages <= cfg.method.budget  # a valid config keeps its invariants


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=120) | raw_config.map(lambda r: yaml.safe_dump(r, allow_unicode=True)))
def test_any_config_text_loads_or_is_a_config_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cfg.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            load_config(path)
        except ConfigError as err:
            assert str(path) in str(err)


# ---------------------------------------------------------------------------- quotas
weights_st = st.dictionaries(st.text("abcdefgh", min_size=1, max_size=3),
                             st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=20)


@FAST
@given(weights_st, st.integers(0, 10_000))
def test_largest_remainder_is_within_one_of_exact_and_order_preserving(weights, total):
    q = largest_remainder(weights, total)
    assert sum(q.values()) == total and all(v >= 0 for v in q.values())
    mass = sum(weights.values())
    share = weights if mass > 0 else {k: 1.0 for k in weights}
    mass = mass if mass > 0 else float(len(weights))
    for k in weights:
        assert abs(q[k] - total * share[k] / mass) < 1 + 1e-9
    for a in weights:
        for b in weights:
            if share[a] > share[b]:
                assert q[a] >= q[b]


counts_st = st.dictionaries(st.text("abcdefgh", min_size=1, max_size=3), st.integers(1, 500),
                            min_size=1, max_size=15)


@FAST
@given(counts_st, st.integers(1, 8), st.data())
def test_random_policy_never_needs_synthesis_and_naive_is_balanced(counts, stages, data):
    budget = data.draw(st.integers(stages, max(stages, sum(counts.values()))))
    assume(budget <= sum(counts.values()))  # the pool can cover the budget
    for p in plan_run("random", budget, stages, counts):
        assert not p.tail  # proportional to what is left: never more than a domain holds
    for p in plan_run("naive", budget, stages, counts):
        assert max(p.quotas.values()) - min(p.quotas.values()) <= 1
    spent = [sum(p.real.values()) + sum(p.shortfall.values()) for p in plan_run("adaptive", budget,
                                                                               stages, counts)]
    assert sum(spent) == budget  # every call is either a real input or a synthetic example


# ---------------------------------------------------------------------------- sampler
sizes_st = st.dictionaries(st.sampled_from(list("abcdefg")), st.integers(1, 30), min_size=1, max_size=6)


@FAST
@given(sizes_st, st.integers(1, 120), st.data())
def test_sampler_follows_exact_weights_and_cycles_without_repeats(sizes, n, data):
    raw = data.draw(st.lists(st.floats(0, 10, allow_nan=False), min_size=len(sizes),
                             max_size=len(sizes)))
    weights = dict(zip(sizes, raw))
    if sum(raw) == 0:
        weights = {d: 1.0 for d in sizes}
    s = DomainSampler(sizes, weights, seed=1, mode="largest_remainder")
    drawn: dict[str, list[int]] = {d: [] for d in sizes}
    for _ in range(4):
        slots = s.next_interval(n)
        got = Counter(d for d, _ in slots)
        assert dict(got) == {d: c for d, c in largest_remainder(weights, n).items() if c}
        for d, i in slots:
            drawn[d].append(i)
    for d, items in drawn.items():  # whole passes over a domain: every item seen equally often
        seen = Counter(items)
        uses = [seen.get(i, 0) for i in range(sizes[d])]
        assert max(uses) - min(uses) <= 1
        if weights[d] == 0:
            assert not items


@FAST
@given(sizes_st, st.integers(50, 400))
def test_categorical_sampler_never_draws_a_zero_weight_domain(sizes, n):
    zero = sorted(sizes)[0]
    weights = {d: (0.0 if d == zero else 1.0) for d in sizes}
    if len(sizes) == 1:
        weights = {zero: 1.0}
    s = DomainSampler(sizes, weights, seed=2)
    slots = s.next_interval(n)
    assert len(slots) == n and all(0 <= i < sizes[d] for d, i in slots)
    if len(sizes) > 1:
        assert all(d != zero for d, _ in slots)
        share = Counter(d for d, _ in slots)
        assert all(math.isfinite(v) for v in share.values())
