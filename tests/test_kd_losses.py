"""Chunked KD losses: exact against full-logit autograd, sparse top-k teacher, real tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from domdistill.errors import ConfigError, InputError
from domdistill.models.compat import check_kd_compatible
from domdistill.models.tiny import build_tiny_model, train_tokenizer
from domdistill.training.divergences import full_logit_kd_loss, sparse_reference_fkl
from domdistill.training.kd_losses import (
    KDLossParts,
    auto_chunk_size,
    chunked_kd_loss,
    sparse_kd_loss,
)
from domdistill.training.kd_trainer import kd_loss

F64 = torch.float64
DIVERGENCES = [("fkl", None), ("rkl", None), ("jsd", 0.5), ("jsd", 0.0), ("jsd", 1.0),
               ("jsd", 0.3), ("skew_fkl", 0.1), ("skew_fkl", 0.4), ("skew_rkl", 0.1), ("skew_rkl", 0.4),
               ("tvd", None)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-300))


def _inputs(n=37, h=16, ht=24, v_s=50, v_t=56, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, min(v_s, v_t), (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.3] = -100
    return dict(
        h=(2 * torch.randn(n, h, generator=g, dtype=dtype)).requires_grad_(),
        w=torch.randn(v_s, h, generator=g, dtype=dtype).requires_grad_(),
        th=2 * torch.randn(n, ht, generator=g, dtype=dtype),
        tw=torch.randn(v_t, ht, generator=g, dtype=dtype),
        labels=labels)


def _grads(loss: torch.Tensor, *params: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, params))


def _kw(div: str, param: float | None, temperature: float) -> dict:
    return dict(divergence=div, temperature=temperature, gamma=0.7,
                beta=param if div == "jsd" else None,
                lam=param if div in ("skew_fkl", "skew_rkl") else None)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("div,param", DIVERGENCES)
def test_matches_full_logit_reference(div, param, temperature):
    x = _inputs(seed=len(div) * 7 + int(100 * (param or 0)) + int(10 * temperature))
    kw = _kw(div, param, temperature)
    parts = chunked_kd_loss(x["h"], x["w"], x["th"], x["tw"], x["labels"], chunk_size=8,
                            return_parts=True, **kw)
    ref, ce, kd = full_logit_kd_loss(x["h"] @ x["w"].T, x["th"] @ x["tw"].T, x["labels"], **kw)
    assert isinstance(parts, KDLossParts) and parts.n_tokens == int((x["labels"] >= 0).sum())
    assert kd > 0
    for got, want in ((parts.total, ref), (parts.ce, ce), (parts.kd, kd)):
        assert abs(float(got.detach() - want.detach())) <= 1e-5 * abs(float(want.detach()))
    for got, want in zip(_grads(parts.total, x["h"], x["w"]), _grads(ref, x["h"], x["w"])):
        assert _rel(got, want) < 1e-5


def test_student_padded_rows_get_no_gradient_and_chunking_does_not_matter():
    x = _inputs(v_s=64, v_t=50)  # student head padded beyond the teacher's
    args = (x["h"], x["w"], x["th"], x["tw"], x["labels"])
    losses = [chunked_kd_loss(*args, chunk_size=c) for c in (1, 5, 37, 1000)]
    ref, _, _ = full_logit_kd_loss(x["h"] @ x["w"].T, x["th"] @ x["tw"].T, x["labels"])
    assert all(abs(float(lo - ref)) < 1e-12 for lo in losses)
    dh, dw = _grads(losses[1], x["h"], x["w"])
    rh, rw = _grads(ref, x["h"], x["w"])
    assert dw.shape == (64, 16) and torch.all(dw[50:] == 0)
    assert _rel(dw, rw) < 1e-10 and _rel(dh, rh) < 1e-10
    assert torch.all(dh[x["labels"] == -100] == 0)


def test_jsd_tends_to_scaled_forward_kl_as_beta_goes_to_zero():
    x = _inputs()  # moderate logits: the limit needs beta * p << q on every token
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(37, 50, generator=g, dtype=F64), torch.randn(37, 50, generator=g, dtype=F64)
    _, _, fkl = full_logit_kd_loss(s, t, x["labels"], divergence="fkl")
    _, _, j = full_logit_kd_loss(s, t, x["labels"], divergence="jsd", beta=1e-6)
    assert abs(float(j) / 1e-6 - float(fkl)) < 1e-3 * float(fkl)
    _, _, fkl_kl = full_logit_kd_loss(s, t, x["labels"], divergence="jsd", beta=0.0)
    keep = x["labels"] >= 0
    direct = F.kl_div(s[keep, :50].log_softmax(-1), t[keep, :50].log_softmax(-1),
                      log_target=True, reduction="batchmean")
    assert abs(float(fkl_kl - direct)) < 1e-12


def test_grad_scale_float32_and_frozen_head():
    x = _inputs(dtype=torch.float32)
    loss = chunked_kd_loss(x["h"], x["w"], x["th"], x["tw"], x["labels"], chunk_size=16)
    dh, dw = _grads(3 * loss, x["h"], x["w"])
    x64 = {k: v.detach().double().requires_grad_(v.requires_grad) for k, v in x.items()
           if k != "labels"}
    ref, _, _ = full_logit_kd_loss(x64["h"] @ x64["w"].T, x64["th"] @ x64["tw"].T, x["labels"])
    rh, rw = _grads(3 * ref, x64["h"], x64["w"])
    assert dh.dtype == torch.float32 and _rel(dh.double(), rh) < 1e-4 and _rel(dw.double(), rw) < 1e-4
    frozen = x["w"].detach()
    loss = chunked_kd_loss(x["h"], frozen, x["th"], x["tw"], x["labels"])
    (dh2,) = _grads(loss, x["h"])
    assert _rel(dh2.double(), rh / 3) < 1e-4


def test_bfloat16_inputs_and_batch_shape():
    x = _inputs(dtype=torch.float32)
    h = x["h"].detach().to(torch.bfloat16).reshape(1, 37, 16).requires_grad_()
    w = x["w"].detach().to(torch.bfloat16).requires_grad_()
    loss = chunked_kd_loss(h, w, x["th"].to(torch.bfloat16), x["tw"], x["labels"].view(1, 37))
    dh, dw = _grads(loss, h, w)
    assert loss.dtype == torch.bfloat16 and dh.shape == (1, 37, 16) and dw.dtype == torch.bfloat16
    ref, _, _ = full_logit_kd_loss(h.double() @ w.double().T, x["th"].to(torch.bfloat16).double()
                                   @ x["tw"].double().T, x["labels"])
    assert abs(float(loss) - float(ref)) < 2e-2 * float(ref)


def test_all_tokens_masked_is_zero_not_nan():
    x = _inputs()
    labels = torch.full_like(x["labels"], -100)
    parts = chunked_kd_loss(x["h"], x["w"], x["th"], x["tw"], labels, return_parts=True)
    assert float(parts.total) == 0.0 and parts.n_tokens == 0
    dh, dw = _grads(parts.total, x["h"], x["w"])
    assert torch.all(dh == 0) and torch.all(dw == 0)


def test_bad_inputs_fail_before_compute():
    x = _inputs()
    args = (x["h"], x["w"], x["th"], x["tw"])
    with pytest.raises(ConfigError, match="unknown divergence 'kl2'"):
        chunked_kd_loss(*args, x["labels"], divergence="kl2")
    with pytest.raises(ConfigError, match="beta"):
        chunked_kd_loss(*args, x["labels"], divergence="jsd", beta=1.5)
    bad = x["labels"].clone()
    bad[3] = 50
    with pytest.raises(InputError, match="label 50 at row 3 is outside"):
        chunked_kd_loss(*args, bad)
    with pytest.raises(InputError, match="temperature"):
        chunked_kd_loss(*args, x["labels"], temperature=0.0)


@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_sparse_matches_reference(temperature):
    x = _inputs(v_s=60, v_t=60)
    lp_full = (x["th"] @ x["tw"].T).log_softmax(-1)
    lpk, ids = lp_full.topk(6, dim=-1)
    loss = sparse_kd_loss(x["h"], x["w"], ids, lpk, x["labels"], temperature=temperature,
                          chunk_size=7)
    ref, _, _ = sparse_reference_fkl(x["h"] @ x["w"].T, ids, lpk, x["labels"],
                                     temperature=temperature)
    assert abs(float(loss - ref)) < 1e-5 * float(ref)
    for got, want in zip(_grads(loss, x["h"], x["w"]), _grads(ref, x["h"], x["w"])):
        assert _rel(got, want) < 1e-5


def test_sparse_is_a_lower_bound_and_exact_with_full_support():
    x = _inputs(v_s=60, v_t=60)
    t = x["th"] @ x["tw"].T
    lp_full = t.log_softmax(-1)
    args = (x["h"], x["w"])
    dense = chunked_kd_loss(*args, x["th"], x["tw"], x["labels"], return_parts=True)
    lpk, ids = lp_full.topk(60, dim=-1)
    full = sparse_kd_loss(*args, ids, lpk, x["labels"], return_parts=True)
    assert abs(float(full.kd - dense.kd)) < 1e-10
    for k in (1, 5, 30):
        lpk, ids = lp_full.topk(k, dim=-1)
        part = sparse_kd_loss(*args, ids, lpk, x["labels"], return_parts=True)
        assert 0 < float(part.kd) < float(dense.kd)


def test_real_tiny_llamas_with_padded_teacher_head(shared_data: Path):
    texts = [json.loads(line)["problem"] for line in
             (shared_data / "math-500" / "test.jsonl").read_text().splitlines()[:200]]
    tok = train_tokenizer(texts, vocab_size=320)
    student = build_tiny_model("nano", tok, seed=0)
    teacher = build_tiny_model("micro", tok, seed=1)
    teacher.resize_token_embeddings(len(tok) + 24)  # padded output rows, as in Qwen2.5
    shared = check_kd_compatible(tok, tok, teacher.config, student.config)
    assert shared == len(tok) == student.config.vocab_size < teacher.config.vocab_size
    enc = tok(texts[:3], padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)[:, 1:]
    with torch.no_grad():
        t_out = teacher(**enc, output_hidden_states=True)
    s_out = student(**enc, output_hidden_states=True)
    h = s_out.hidden_states[-1][:, :-1]
    loss = chunked_kd_loss(h, student.lm_head.weight, t_out.hidden_states[-1][:, :-1],
                           teacher.lm_head.weight, labels, chunk_size=16)
    ref, _, _ = full_logit_kd_loss(s_out.logits[:, :-1], t_out.logits[:, :-1], labels)
    assert abs(float(loss - ref)) < 1e-5 * float(ref)
    params = [p for p in student.parameters() if p.requires_grad]
    for got, want in zip(torch.autograd.grad(loss, params, retain_graph=True),
                         torch.autograd.grad(ref, params)):
        assert _rel(got, want) < 1e-4


def test_auto_chunk_size():
    assert auto_chunk_size(151936) == 256 and auto_chunk_size(32000) == 256
    assert auto_chunk_size(8000) == 1024 and auto_chunk_size(16000) == 512


@pytest.mark.parametrize("offline", [False, True])
def test_tied_embeddings_get_both_gradients_float64(offline: bool):
    """SmolLM2-style tied lm_head: the chunked loss's head gradient and the embedding lookup's
    gradient both reach the one weight; loss and every gradient match full float64 logits."""
    from domdistill.training.logit_cache import teacher_topk

    texts = ["x + 1 = 3 so x = 2", "the area of a circle is pi r^2", "7 is prime", "2 + 2 = 4"]
    tok = train_tokenizer(texts * 5, vocab_size=290)
    student = build_tiny_model("nano", tok, seed=0).to(F64)
    teacher = build_tiny_model("micro", tok, seed=1).to(F64).eval()
    tied = student.get_output_embeddings().weight
    assert tied is student.get_input_embeddings().weight
    enc = tok(texts, padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    batch = {**enc, "labels": labels}
    if offline:  # every id kept: the sparse loss is then the full forward KL
        rows = teacher_topk(teacher, [ids[m.bool()].tolist() for ids, m in
                                      zip(enc["input_ids"], enc["attention_mask"])],
                            k=len(tok), temperature=1.0)
        width = labels.shape[1] - 1
        batch["topk_ids"] = torch.zeros(len(texts), width, len(tok), dtype=torch.long)
        batch["topk_logprobs"] = torch.zeros(len(texts), width, len(tok), dtype=F64)
        for r, (i, lp) in enumerate(rows):
            batch["topk_ids"][r, :len(i)], batch["topk_logprobs"][r, :len(i)] = i, lp.to(F64)
            batch["topk_ids"][r, len(i):] = torch.arange(len(tok))
    parts = kd_loss(student, batch, None if offline else teacher, gamma=0.5)
    with torch.no_grad():
        t_logits = teacher(**enc).logits
    ref, _, _ = full_logit_kd_loss(student(**enc).logits[:, :-1], t_logits[:, :-1],
                                   labels[:, 1:], gamma=0.5)
    assert abs(float(parts.total.detach() - ref.detach())) <= 1e-5 * abs(float(ref.detach()))
    params = [p for p in student.parameters() if p.requires_grad]
    got = torch.autograd.grad(parts.total, params)
    want = torch.autograd.grad(ref, params, retain_graph=True)
    for g, w in zip(got, want):
        assert _rel(g, w) < 1e-5
    # both paths matter: the head alone (lookup detached) gives a different gradient
    head_only = torch.autograd.grad(full_logit_kd_loss(
        student(inputs_embeds=student.get_input_embeddings()(enc["input_ids"]).detach(),
                attention_mask=enc["attention_mask"]).logits[:, :-1], t_logits[:, :-1],
        labels[:, 1:], gamma=0.5)[0], tied)[0]
    assert _rel(head_only, got[params.index(tied)]) > 1e-3
