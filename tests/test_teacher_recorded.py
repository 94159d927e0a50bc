"""Replay teachers on real data: the BalDistill authors' recorded outputs, and the built-in program."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from domdistill.data.builtin import BUILTIN_DOMAINS, make_example
from domdistill.data.loaders import load_dataset
from domdistill.evaluation.answers import math_equal
from domdistill.teachers import Budget, Ledger, ProgramTeacher, PromptSet, RecordedTeacher, TeacherClient


@pytest.fixture(scope="module")
def r52(shared_data: Path) -> tuple:
    train = load_dataset(shared_data / "reuters-r52" / "r52-train.txt")
    paths = sorted((shared_data / "baldistill-teacher" / "r52").glob("r52_chatgpt_cot_*.jsonl.gz"))
    return train, RecordedTeacher.from_paths(paths, match="r52", real=train, name="bal-r52")


def test_recorded_r52_covers_training_documents_and_tail_synthesis(r52: tuple) -> None:
    train, teacher = r52
    covered = [ex for ex in train if teacher.has_rationale(ex.input)]
    assert len(covered) >= 4500
    counts = train.counts()
    synth = {d: len(v) for d, v in teacher.synthetic.items()}
    tails = [d for d, n in counts.items() if n < 50]
    assert set(synth) <= set(tails) and len(synth) >= 35  # only domains the files had to fill
    assert all(n >= 25 for n in synth.values()) and sum(synth.values()) >= 1800
    real_keys = {teacher.match_key(ex.input) for ex in train}
    assert not any(teacher.match_key(ex.input) in real_keys for v in teacher.synthetic.values() for ex in v)


def test_recorded_teacher_through_the_client(r52: tuple, tmp_path: Path) -> None:
    train, teacher = r52
    labels = tuple(train.counts())
    covered = [ex for ex in train if teacher.has_rationale(ex.input)][:40]
    missing = next(ex for ex in train if not teacher.has_rationale(ex.input))
    client = TeacherClient(teacher, Ledger(tmp_path / "ledger.sqlite", Budget(calls=100)),
                           PromptSet(task="classification", labels=labels))
    batch = client.rationales(covered + [missing], tags={"stage": 1})
    assert all(r.status == "delivered" and r.text.rstrip().endswith(f"The answer is: {r.answer}")
               for r in batch[:40])
    assert 0.3 < sum(r.correct for r in batch[:40]) / 40 < 1.0  # the recorded teacher is often wrong
    assert batch[40].status == "failed" and "no record" in batch[40].error
    assert missing.input.split()[0] in batch[40].error
    tin = client.synthesize("tin", [ex for ex in train if ex.domain == "tin"][:4], 3, tags={"stage": 1})
    more = client.synthesize("tin", [], 2)
    assert [r.index for r in tin + more] == [0, 1, 2, 3, 4]
    pool = teacher.synthetic["tin"]
    assert [r.example.input for r in tin + more] == [ex.input for ex in pool[:5]]
    assert all(r.example.answer == "tin" and r.example.rationale for r in tin)
    too_far = client.synthesize("tin", [], 1, start=len(pool))
    assert too_far[0].status == "failed" and "synthetic examples for domain 'tin'" in too_far[0].error
    spent = client.ledger.spent()["calls"]
    assert spent == 40 + 5  # failures with no record are not charged
    client.close()


def test_synthesis_cost_two_charges_two_calls_and_checks_agreement(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "baldistill-teacher" / "math" / "math_chatgpt_cot_train_composed_raw.jsonl.gz"
    teacher = RecordedTeacher.from_paths([path], name="bal-math")
    client = TeacherClient(teacher, Ledger(tmp_path / "ledger.sqlite", Budget(calls=40)),
                           PromptSet(task="math"), synthesis_cost=2)
    out = client.synthesize("geometry", [], 20, tags={"stage": 2})
    assert all(r.status == "delivered" for r in out)
    assert client.ledger.spent()["calls"] == 40
    assert any(r.agrees for r in out)
    for r in out:
        rec = teacher.synthetic["geometry"][r.index]
        assert r.example.input == rec.input and r.example.answer == rec.answer
        # the filter compares the teacher's own CoT answer with the answer it intended
        assert r.agrees == math_equal(rec.metadata["prediction"], rec.answer)
    over = client.synthesize("geometry", [], 1)
    assert over[0].status == "budget_exhausted" and "budget" in over.stopped
    client.close()


def test_program_teacher_rationales_and_synthesis(tmp_path: Path) -> None:
    rng = random.Random(0)
    exs = [make_example(d, rng, f"{d}-{i}") for i, d in enumerate(BUILTIN_DOMAINS * 2)]
    with TeacherClient(ProgramTeacher(seed=1), Ledger(tmp_path / "ledger.sqlite")) as client:
        batch = client.rationales(exs, with_answer=False)
        assert all(r.status == "delivered" and r.correct for r in batch)
        synth = client.synthesize(BUILTIN_DOMAINS[-1], exs[:3], 4)
        assert all(r.status == "delivered" and r.agrees and r.example.domain == BUILTIN_DOMAINS[-1]
                   for r in synth)
        assert len({r.example.input for r in synth}) > 1
        again = client.synthesize(BUILTIN_DOMAINS[-1], exs[:3], 4, start=0)
        assert all(r.cached for r in again) and [r.example for r in again] == [r.example for r in synth]
