"""Tiny-model factory: tokenizer training, seeded init, save/reload round trip."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from domdistill.models.tiny import (
    TINY_PRESETS, build_tiny_model, count_parameters, create_tiny_model, train_tokenizer,
)

TEXTS = [f"Add {a} and {b}.\n{a} + {b} = {a + b}\nThe answer is: {a + b}" for a in range(12) for b in range(9)]
TEXTS += ["Reverse the word 'stone'.\nenots\nThe answer is: enots", "Ünïcode — ok? 😀"]


def test_tokenizer_digits_specials_and_round_trip():
    tok = train_tokenizer(TEXTS, vocab_size=300)
    assert len(tok) <= 300
    for name in ("pad", "bos", "eos", "unk"):
        assert getattr(tok, f"{name}_token_id") is not None
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}) == 4
    ids = tok("Add 1234 and 56.", add_special_tokens=True)["input_ids"]
    assert tok.eos_token_id not in ids and tok.bos_token_id not in ids
    pieces = tok.convert_ids_to_tokens(ids)
    assert [p for p in pieces if any(c.isdigit() for c in p)] == ["1", "2", "3", "4", "5", "6"]
    for text in TEXTS[-3:] + ["  two  spaces\n\tand tabs ", "a never-seen word: zyzzyva 9081"]:
        assert tok.decode(tok(text)["input_ids"]) == text
    left = train_tokenizer(TEXTS, vocab_size=300, padding_side="left")
    batch = left(["1", "1 2 3"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, 0].item() == left.pad_token_id


def test_build_is_seeded_and_sized():
    tok = train_tokenizer(TEXTS, vocab_size=300)
    rng_before = torch.random.get_rng_state()
    a = build_tiny_model("nano", tok, seed=3)
    assert torch.equal(rng_before, torch.random.get_rng_state())
    b = build_tiny_model("nano", tok, seed=3)
    c = build_tiny_model("nano", tok, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.config.vocab_size == len(tok) and a.config.tie_word_embeddings
    assert a.get_input_embeddings().weight is a.get_output_embeddings().weight
    assert (a.config.bos_token_id, a.config.eos_token_id, a.config.pad_token_id) == (
        tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    sizes = [count_parameters(build_tiny_model(p, tok)) for p in ("nano", "micro", "tiny")]
    assert sizes == sorted(sizes) and sizes[0] < 100_000 < sizes[1] < 1_000_000
    wide = build_tiny_model("nano", tok, hidden_size=48)
    assert wide.config.hidden_size == 48 and "base" in TINY_PRESETS


def test_create_save_reload_identical_logits(tmp_path):
    out = create_tiny_model(tmp_path / "student", TEXTS, preset="micro", vocab_size=320, seed=7)
    assert out.is_dir() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.hidden_size == TINY_PRESETS["micro"]["hidden_size"]
    for text in TEXTS[:5] + TEXTS[-2:]:
        assert tok.decode(tok(text)["input_ids"]) == text
    tok.padding_side = "left"
    batch = tok(TEXTS[:4], padding=True, return_tensors="pt")
    ref_tok = train_tokenizer(TEXTS, vocab_size=320)
    ref = build_tiny_model("micro", ref_tok, seed=7).eval()
    assert tok.get_vocab() == ref_tok.get_vocab()
    with torch.no_grad():
        got = model(**batch).logits
        want = ref(**batch).logits
        again = AutoModelForCausalLM.from_pretrained(out).eval()(**batch).logits
    assert torch.equal(got, want) and torch.equal(got, again)
    assert got.shape == (4, batch["input_ids"].shape[1], len(tok))
