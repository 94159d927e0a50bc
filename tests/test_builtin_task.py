"""The built-in long-tailed task: domains, Zipf shape, determinism, and program-checked answers."""

from __future__ import annotations

import random
import re

import pytest

from domdistill.data.builtin import (
    BUILTIN_DOMAINS, builtin_dataset, builtin_test_set, make_example, solve, zipf_counts,
)
from domdistill.data.templates import StudentTemplate
from domdistill.errors import InputError


@pytest.fixture(scope="module")
def pool():
    return builtin_dataset()


def test_domains_and_zipf_shape(pool):
    assert len(BUILTIN_DOMAINS) >= 8 and len(set(BUILTIN_DOMAINS)) == len(BUILTIN_DOMAINS)
    counts = pool.counts()
    assert len(pool) == 2000 and set(counts) == set(BUILTIN_DOMAINS)
    ordered = [counts[d] for d in BUILTIN_DOMAINS]
    assert all(a > b for a, b in zip(ordered, ordered[1:])), ordered
    assert ordered[0] / ordered[-1] >= 20
    assert ordered[0] >= 300 and ordered[-1] < 50
    flat = builtin_dataset(size=700, alpha=0.0).counts()
    assert set(flat.values()) == {50}
    assert sum(zipf_counts(1234, 9, 1.7)) == 1234


def test_deterministic_unique_and_short(pool):
    again = builtin_dataset()
    assert [e.to_dict() for e in pool] == [e.to_dict() for e in again]
    other = builtin_dataset(seed=1)
    assert [e.input for e in pool] != [e.input for e in other]
    assert len({e.id for e in pool}) == len(pool)
    assert max(len(e.input) for e in pool) < 60
    assert max(len(e.rationale) for e in pool) < 120
    assert not any("The answer is" in e.rationale for e in pool)


def test_solve_reproduces_every_example(pool):
    for ex in pool:
        assert solve(ex.domain, ex.input) == (ex.rationale, ex.answer)
        completion = StudentTemplate.completion(ex.rationale, ex.answer)
        assert completion.endswith(f"The answer is: {ex.answer}")


def _numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", text)]


def test_answers_checked_independently(pool):
    by = pool.by_domain
    for ex in by["addition"]:
        assert int(ex.answer) == sum(_numbers(ex.input))
    for ex in by["subtraction"]:
        b, a = _numbers(ex.input)
        assert int(ex.answer) == a - b
    for ex in by["comparison"]:
        assert int(ex.answer) == max(_numbers(ex.input))
    for ex in by["sorting"]:
        assert ex.answer == ", ".join(map(str, sorted(_numbers(ex.input))))
    for ex in by["parity"]:
        assert ex.answer == ("even" if _numbers(ex.input)[0] % 2 == 0 else "odd")
    for ex in by["reversal"]:
        word = re.search(r"'(\w+)'", ex.input).group(1)
        assert ex.answer == "".join(reversed(word))
    for ex in by["counting"]:
        letter, word = re.findall(r"'(\w+)'", ex.input)
        assert int(ex.answer) == word.count(letter)
    for ex in by["multiplication"]:
        a, b = _numbers(ex.input)
        assert int(ex.answer) == a * b


def test_solve_handles_new_inputs_and_rejects_others():
    assert solve("addition", "Add 58 and 67.")[1] == "125"
    assert solve("addition", "  add 5 and 7. ")[1] == "12"
    assert solve("weekday", "What day is 3 days after Saturday?")[1] == "Tuesday"
    assert solve("letter_shift", "What letter is 2 after x?")[1] == "z"
    assert solve("unit_conversion", "Convert 11 h to min.")[1] == "660"
    assert solve("comparison", "Which is larger: 41 or 47?")[1] == "47"
    with pytest.raises(InputError, match="not a addition question"):
        solve("addition", "What is 2 plus 2?")
    with pytest.raises(InputError, match="unknown built-in domain"):
        solve("poetry", "Add 1 and 2.")
    with pytest.raises(InputError, match="cannot convert"):
        solve("unit_conversion", "Convert 3 km to s.")
    with pytest.raises(InputError, match="no letter comes 3 after"):
        solve("letter_shift", "What letter is 3 after y?")


def test_make_example_for_synthesis():
    rng = random.Random(5)
    made = [make_example(d, rng, f"syn-{i}") for i, d in enumerate(BUILTIN_DOMAINS * 3)]
    assert [m.domain for m in made] == BUILTIN_DOMAINS * 3
    assert all(solve(m.domain, m.input) == (m.rationale, m.answer) for m in made)
    rng2 = random.Random(5)
    assert make_example(BUILTIN_DOMAINS[0], rng2, "x").input == made[0].input


def test_test_set_balanced_and_mostly_disjoint(pool):
    test = builtin_test_set(per_domain=20)
    assert test.counts() == {d: 20 for d in sorted(BUILTIN_DOMAINS)}
    assert len({e.id for e in test}) == len(test)
    seen = {(e.domain, e.input) for e in pool}
    overlap = [e for e in test if (e.domain, e.input) in seen]
    assert all(e.metadata["in_pool"] for e in overlap)
    assert len(overlap) < 0.1 * len(test)
    for d in ("addition", "comparison", "subtraction", "parity", "sorting"):
        assert not any(e.domain == d for e in overlap)
    assert [e.input for e in test] == [e.input for e in builtin_test_set(per_domain=20)]
