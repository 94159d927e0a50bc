"""A local HF model as teacher (batched, left-padded generation; logits) and the prompt parsing."""

from __future__ import annotations

from pathlib import Path

import torch

from domdistill.data.example import DomainExample
from domdistill.models.tiny import build_tiny_model, train_tokenizer
from domdistill.teachers import Ledger, PromptSet, TeacherClient
from domdistill.teachers.hf_local import HFTeacher
from domdistill.teachers.prompts import parse_synthesis
from domdistill.redact import redact, remember

TEXTS = ["Add 3 and 4.", "Which is larger: 7 or 12?", "Reverse the word apple.",
         "How many letters are in banana?", "The answer is: 7"] * 20


def tiny_teacher(batch_size: int) -> HFTeacher:
    tok = train_tokenizer(TEXTS, vocab_size=300)
    model = build_tiny_model("nano", tok, seed=0)
    return HFTeacher(model, tok, name="nano", batch_size=batch_size)


def test_hf_teacher_batches_with_left_padding_like_one_by_one(tmp_path: Path) -> None:
    exs = [DomainExample(str(i), "d", t, "x") for i, t in enumerate(TEXTS[:4])]
    batched = TeacherClient(tiny_teacher(4), Ledger(tmp_path / "a.sqlite"), PromptSet(system=""),
                            max_tokens=8, concurrency=1)
    single = TeacherClient(tiny_teacher(1), Ledger(tmp_path / "b.sqlite"), PromptSet(system=""),
                           max_tokens=8, concurrency=1)
    a, b = batched.rationales(exs, with_answer=False), single.rationales(exs, with_answer=False)
    assert all(r.status == "delivered" and (r.text or r.problem) for r in a)
    # greedy: padding must not change the output (an untrained model may reply with blanks only)
    assert [(r.text, r.problem) for r in a] == [(r.text, r.problem) for r in b]
    assert batched.ledger.spent()["calls"] == 4
    batched.close()
    single.close()


def test_hf_teacher_logits_match_a_plain_forward() -> None:
    teacher = tiny_teacher(2)
    out = teacher.logits(["Add 3 and 4.", "Reverse the word apple."])
    enc = teacher._tok("Add 3 and 4.", return_tensors="pt")
    with torch.no_grad():
        ref = teacher._model(**enc).logits[0]
    assert out[0].shape == ref.shape and torch.allclose(out[0], ref, atol=1e-4)
    assert out[1].shape[-1] == ref.shape[-1]


def test_parse_synthesis_and_redaction() -> None:
    reply = ("Example 1:\nInput: old one\nThe answer is: A\n\nInput: A new question?\n"
             "Reasoning: first this, then that.\nThe answer is: B.")
    assert parse_synthesis(reply) == ("A new question?", "first this, then that.", "B")
    assert parse_synthesis("no format at all") == (None, None, None)
    key = "local-secret-0123456789abcdef"  # not key-shaped: found only because it is remembered
    remember(key, "$TEST_KEY")
    shown = redact(f"bad key {key[:12]}... and {key}; sk-{'x1' * 12} too; sk-learn-examples, "
                   f"/data/sk-learn-experiments-2024/a.jsonl")
    assert key[:12] not in shown and key not in shown and "sk-x" not in shown
    assert shown == ("bad key $TEST_KEY... and $TEST_KEY; [redacted key] too; sk-learn-examples, "
                     "/data/sk-learn-experiments-2024/a.jsonl")
