"""Offline teacher logits: round trip, resume after a partial write, and the sparse loss from a
full-vocabulary cache equal to the dense (online) loss."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch

from domdistill.data.builtin import builtin_dataset
from domdistill.errors import ConfigError
from domdistill.methods.ddk_parts import lm_text
from domdistill.models.tiny import build_tiny_model, train_tokenizer
from domdistill.training.data import PadCollator, encode_pair
from domdistill.training.kd_trainer import kd_loss
from domdistill.training.logit_cache import LogitCache, build_logit_cache, tokenizer_fingerprint


@pytest.fixture(scope="module")
def setup():
    texts = [lm_text(ex) for ex in builtin_dataset(60, seed=4)]
    tok = train_tokenizer(texts, vocab_size=300)
    teacher = build_tiny_model("nano", tok, seed=5).eval()
    seqs = [(f"ex{i}", encode_pair(tok, "", t, 48)["input_ids"]) for i, t in enumerate(texts[:7])]
    return tok, teacher, seqs


def _build(root: Path, setup, **kw) -> LogitCache:
    tok, teacher, seqs = setup
    opts = dict(teacher_id="nano-5", k=5, temperature=1.0, shard_size=3, batch_size=2)
    opts.update(kw)
    return build_logit_cache(root, teacher, tok, seqs, **opts)


def test_round_trip_gives_the_teachers_top_k(setup, tmp_path):
    tok, teacher, seqs = setup
    cache = _build(tmp_path / "c", setup, logprob_dtype="float32", temperature=2.0)
    assert len(cache) == 7 and cache.k == 5 and cache.temperature == 2.0
    assert cache.spec["tokenizer"] == tokenizer_fingerprint(tok)
    reopened = LogitCache(tmp_path / "c")
    for key, ids in seqs:
        with torch.no_grad():
            logits = teacher(input_ids=torch.tensor([ids])).logits[0, :-1]
        want_lp, want_ids = torch.log_softmax(logits / 2.0, -1).topk(5, -1)
        got_ids, got_lp = reopened.get(key, ids)
        assert got_ids.shape == (len(ids) - 1, 5)
        torch.testing.assert_close(got_lp, want_lp, rtol=0, atol=1e-5)
        assert torch.equal(got_ids, want_ids)
    with pytest.raises(ConfigError, match="tokenized differently"):
        reopened.get(seqs[0][0], seqs[0][1][:-1])
    with pytest.raises(KeyError):
        reopened.get("missing")


def test_rerun_after_a_partial_write_recomputes_only_what_is_missing(setup, tmp_path):
    root = tmp_path / "c"
    _build(root, setup)
    shards = sorted(root.glob("shard-*.pt"))
    assert [p.name for p in shards] == ["shard-00000.pt", "shard-00001.pt", "shard-00002.pt"]
    original = {p.name: p.read_bytes() for p in shards}
    kept = os.stat(shards[0])
    # a build killed mid-way: no manifest, one shard never written, one left truncated
    # (e.g. copied in half), a stray temporary file from an interrupted atomic write
    (root / "manifest.json").unlink()
    shards[1].unlink()
    shards[2].write_bytes(original["shard-00002.pt"][:50])
    (root / ".shard-00001.pt.abc.tmp").write_bytes(b"partial")
    with pytest.raises(ConfigError, match="manifest"):
        LogitCache(root)
    cache = _build(root, setup)
    assert len(cache) == 7
    again = os.stat(shards[0])
    assert (again.st_ino, again.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)  # not rewritten
    for name, data in original.items():
        a = torch.load(root / name, weights_only=True)
        b = torch.load(io.BytesIO(data), weights_only=True)
        assert a["keys"] == b["keys"]
        for x, y in zip(a["logprobs"], b["logprobs"]):
            assert torch.equal(x, y)
    # other settings in the same folder are refused
    with pytest.raises(ConfigError, match="k"):
        _build(root, setup, k=6)


def test_sparse_loss_with_k_equal_vocab_equals_the_dense_loss(setup, tmp_path):
    tok, teacher, seqs = setup
    v = teacher.config.vocab_size
    cache = _build(tmp_path / "full", setup, k=v, logprob_dtype="float32")
    student = build_tiny_model("nano", tok, seed=9)
    items = [{"input_ids": ids, "labels": list(ids)} for _, ids in seqs[:4]]
    for it in items:
        it["labels"][0] = -100
    batch = PadCollator(tok.pad_token_id)(items)
    width = batch["input_ids"].shape[1] - 1
    ids = torch.zeros(len(items), width, v, dtype=torch.long)
    lps = torch.zeros(len(items), width, v)
    for r, (key, seq) in enumerate(seqs[:4]):
        i, lp = cache.get(key, seq)
        ids[r, :len(seq) - 1], lps[r, :len(seq) - 1] = i, lp
    dense = kd_loss(student, batch, teacher, gamma=0.5)
    dense.total.backward()
    g_dense = student.lm_head.weight.grad.clone()
    student.zero_grad()
    sparse = kd_loss(student, {**batch, "topk_ids": ids, "topk_logprobs": lps}, None, gamma=0.5)
    sparse.total.backward()
    assert float(sparse.kd) == pytest.approx(float(dense.kd), abs=1e-5)  # float32 rounding
    assert float(sparse.ce) == pytest.approx(float(dense.ce), rel=1e-6)
    assert float(sparse.total.detach()) == pytest.approx(float(dense.total.detach()), rel=1e-5)
    torch.testing.assert_close(student.lm_head.weight.grad, g_dense, rtol=1e-4, atol=1e-6)


def test_real_vocabulary_ids_round_trip_in_two_bytes(smollm2: Path, tmp_path):
    """SmolLM2's 49,152 ids fit 16 unsigned bits: stored as uint16, read back exactly."""
    from domdistill.models.loading import load_model_and_tokenizer
    from domdistill.training.logit_cache import teacher_topk

    teacher, tok = load_model_and_tokenizer(smollm2, "float32")
    texts = ["Find the sum of all prime numbers below 20.", "A circle has radius 3; its area?"]
    seqs = [(f"m{i}", tok(t)["input_ids"]) for i, t in enumerate(texts)]
    cache = build_logit_cache(tmp_path / "c", teacher.eval(), tok, seqs, teacher_id="smollm2",
                              k=64, keyed=True)
    assert cache.root.parent == tmp_path / "c" and cache.root.name.startswith("logits-")
    want = teacher_topk(teacher, [ids for _, ids in seqs], k=64, temperature=1.0)
    shard = torch.load(cache.root / "shard-00000.pt", weights_only=True)
    assert any(int(i.long().max()) >= 2 ** 15 for i in shard["ids"])  # ids past int16's range
    assert {i.dtype for i in shard["ids"]} <= {torch.int16, torch.uint16}
    for (key, _), (ids, lps) in zip(seqs, want):
        got_ids, got_lps = cache.get(key)
        assert torch.equal(got_ids, ids) and torch.allclose(got_lps, lps, atol=2e-2)
    stored = sum(t.element_size() * t.numel() for t in shard["ids"] + shard["logprobs"])
    assert stored == cache.rows * 64 * (2 + 2)  # 2-byte ids and 2-byte log-probs per entry
