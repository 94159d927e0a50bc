"""Memory-efficient knowledge-distillation losses: CE + gamma * T^2 * D(p_T, p_S).

The student's full (tokens, vocab) logits are never materialised. One core,
:func:`_chunked_pass`, walks over the target tokens in chunks; for each chunk it projects the
student's hidden states through the lm_head (``h @ W^T``), gets the teacher's distribution for the
same rows, computes CE and the divergence, and the gradient of the total loss with respect to the
chunk's logits analytically. That gradient is pushed straight through the lm_head
(``dh = G @ W``, ``dW += G^T @ h``), and the autograd functions return the saved gradients in
backward. Per-chunk work buffers are allocated once per call and reused.

Conventions:

* ``labels`` are aligned with the hidden rows (shift them before calling for next-token LM);
  rows whose label is ``ignore_index`` are dropped before any compute.
* Both CE and KD are means over the non-ignored ("target") tokens; KD carries the T^2 factor
  (Hinton), so gradients keep their scale when T changes. CE is always at T = 1.
* Vocabulary: teacher and student may differ by padded rows (e.g. 151936 vs 152064). Both are
  sliced to the shared vocabulary ``min(V_s, V_t)`` and both softmaxes, CE included, run over it;
  the student's padded rows get a zero gradient. Check tokenizers first with
  :func:`domdistill.models.compat.check_kd_compatible`.
* No lm_head bias (Llama/Qwen have none). Half-precision inputs are upcast to float32 per chunk;
  float64 inputs are computed in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from domdistill.errors import InputError
from domdistill.training.divergences import resolve_divergence

# Rows per chunk: five (chunk, vocab) work buffers live during a pass. Fewer than 256 rows makes
# the lm_head matmuls (dW += G^T h above all) less efficient; above 2**23 elements per buffer the
# loss's memory stops being small next to full logits (see bench/kd_loss.py).
CHUNK_ELEMENTS = 2 ** 23
MIN_CHUNK, MAX_CHUNK = 256, 1024


@dataclass(frozen=True)
class KDLossParts:
    """The loss and its parts: ``total = ce + gamma * kd`` (only ``total`` carries gradients)."""

    total: Tensor
    ce: Tensor
    kd: Tensor
    n_tokens: int


def auto_chunk_size(vocab_size: int) -> int:
    """Rows per chunk: a power of two with chunk * vocab near ``CHUNK_ELEMENTS``, in [256, 1024]."""
    rows = max(1, CHUNK_ELEMENTS // max(vocab_size, 1))
    return int(min(MAX_CHUNK, max(MIN_CHUNK, 1 << (rows.bit_length() - 1))))


# (rows, lq, q, out) -> per-row D; writes dD/dz into ``out``, which is free scratch on entry
KDChunkFn = Callable[[slice, Tensor, Tensor, Tensor], Tensor]


def _mm_into(out: Tensor, a: Tensor, b_t: Tensor) -> Tensor:
    """``out = a @ b_t.T``; with other dtypes the product runs in the weight's dtype, upcast."""
    if a.dtype == out.dtype and b_t.dtype == out.dtype:
        return torch.mm(a, b_t.t(), out=out)
    return out.copy_(a.to(b_t.dtype) @ b_t.t())


def _chunked_pass(h: Tensor, w: Tensor, labels: Tensor, kd_chunk: KDChunkFn, *,
                  temperature: float, gamma: float, chunk_size: int, n_norm: int,
                  want_dh: bool, want_dw: bool, workspace: dict[str, Tensor]
                  ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Sum of CE and of T^2 * D over rows of ``h`` (all targets) and the gradients of
    ``(CE_sum + gamma * KD_sum) / n_norm`` w.r.t. ``h`` and ``w`` (``w`` has the shared vocab)."""
    n, v = h.shape[0], w.shape[0]
    s_buf, lq_buf, q_buf = workspace["s"], workspace["lq"], workspace["q"]
    ce_buf = workspace.get("ce_q")
    dh = torch.empty(n, w.shape[1], dtype=h.dtype, device=h.device) if want_dh else None
    dw = torch.zeros(w.shape, dtype=s_buf.dtype, device=h.device) if want_dw else None
    ce_sum = torch.zeros((), dtype=s_buf.dtype, device=h.device)
    kd_sum = torch.zeros((), dtype=s_buf.dtype, device=h.device)
    t2 = temperature ** 2
    for r0 in range(0, n, chunk_size):
        rows = slice(r0, min(n, r0 + chunk_size))
        m = rows.stop - rows.start
        s, lq, q = s_buf[:m], lq_buf[:m], q_buf[:m]
        hc, lab = h[rows], labels[rows].unsqueeze(1)
        _mm_into(s, hc, w)
        if temperature != 1.0:  # CE at T = 1 first, then rescale the logits in place
            torch._log_softmax(s, -1, False, out=lq)
            ce_sum -= lq.gather(1, lab).sum()
            torch._softmax(s, -1, False, out=ce_buf[:m])
            s.div_(temperature)
        torch._log_softmax(s, -1, False, out=lq)
        torch._softmax(s, -1, False, out=q)
        if temperature == 1.0:
            ce_sum -= lq.gather(1, lab).sum()
        g = s  # the logits are no longer needed: their buffer receives dD/dz, then dLoss/ds
        kd_sum += t2 * kd_chunk(rows, lq, q, g).sum()
        if not (want_dh or want_dw):
            continue
        g.mul_(gamma * temperature / n_norm)
        g.add_(q if temperature == 1.0 else ce_buf[:m], alpha=1.0 / n_norm)
        g.scatter_add_(1, lab, torch.full((m, 1), -1.0 / n_norm, dtype=g.dtype, device=g.device))
        if want_dh:
            dh[rows] = (g @ w if w.dtype == g.dtype else g.to(w.dtype) @ w).to(h.dtype)
        if want_dw:
            dw.addmm_(g.t(), hc.to(g.dtype))
    return ce_sum, kd_sum, dh, dw


def _dense_teacher(th: Tensor, tw: Tensor, divergence: str, temperature: float,
                   beta: float | None, lam: float | None, ws: dict[str, Tensor]) -> KDChunkFn:
    """KD chunk function for a teacher given as hidden states and lm_head weight (no grad)."""
    fn, param = resolve_divergence(divergence, beta, lam)

    def chunk(rows: slice, lq: Tensor, q: Tensor, out: Tensor) -> Tensor:
        m = rows.stop - rows.start
        t, lp, p = out, ws["lp"][:m], ws["p"][:m]  # teacher logits borrow ``out`` until lp, p
        _mm_into(t, th[rows], tw)
        if temperature != 1.0:
            t.div_(temperature)
        torch._log_softmax(t, -1, False, out=lp)
        torch._softmax(t, -1, False, out=p)
        return fn(lq, q, lp, p, out, param)

    return chunk


def _sparse_teacher(ids: Tensor, logprobs: Tensor) -> KDChunkFn:
    """KD chunk function for a teacher given as top-k (ids, logprobs) per row."""

    def chunk(rows: slice, lq: Tensor, q: Tensor, out: Tensor) -> Tensor:
        idx, lpk = ids[rows], logprobs[rows].to(q.dtype)
        pk = lpk.exp()
        p_rest = (1.0 - pk.sum(-1)).clamp_(min=0.0)
        out.copy_(q).scatter_(1, idx, 0.0)  # the student's tail: mass outside the teacher's top-k
        q_rest = out.sum(-1).clamp_(min=1e-30)
        lqk, qk = lq.gather(1, idx), q.gather(1, idx)
        d = (pk * (lpk - lqk)).sum(-1) + torch.xlogy(p_rest, p_rest) - p_rest * q_rest.log()
        # dD/dz: q - p on the top-k entries, q * (1 - p_rest / q_rest) on the tail
        out.mul_((1.0 - p_rest / q_rest).unsqueeze(1))
        out.scatter_(1, idx, qk - pk)
        return d

    return chunk


def _workspace(rows: int, vocab: int, dtype: torch.dtype, names: tuple[str, ...],
               device: torch.device | str = "cpu") -> dict[str, Tensor]:
    return {k: torch.empty(rows, vocab, dtype=dtype, device=device) for k in names}


class _ChunkedKD(torch.autograd.Function):
    """Loss in forward with gradients computed alongside; backward returns the saved ones."""

    @staticmethod
    def forward(ctx, h: Tensor, w: Tensor, labels: Tensor, make_kd: Callable, v: int,
                temperature: float, gamma: float, chunk_size: int, ignore_index: int,
                ws_extra: tuple[str, ...]) -> tuple[Tensor, Tensor, Tensor]:
        kept = (labels != ignore_index).nonzero().view(-1)
        n = int(kept.numel())
        cdtype = torch.promote_types(h.dtype, torch.float32)
        want_dh, want_dw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        names = ("s", "lq", "q") + ws_extra + (("ce_q",) if temperature != 1.0 else ())
        ws = _workspace(min(chunk_size, max(n, 1)), v, cdtype, names, h.device)
        ce, kd, dh, dw = _chunked_pass(
            h[kept], w[:v], labels[kept], make_kd(kept, ws), temperature=temperature,
            gamma=gamma, chunk_size=chunk_size, n_norm=max(n, 1), want_dh=want_dh,
            want_dw=want_dw, workspace=ws)
        del ws
        grad_h = grad_w = None
        if want_dh:
            grad_h = dh if n == h.shape[0] else torch.zeros_like(h).index_copy_(0, kept, dh)
        if want_dw:
            if v == w.shape[0] and dw.dtype == w.dtype:
                grad_w = dw
            else:
                grad_w = torch.zeros_like(w)
                grad_w[:v] = dw
        ctx.save_for_backward(grad_h, grad_w)
        ce, kd = ce / max(n, 1), kd / max(n, 1)
        total = (ce + gamma * kd).to(h.dtype)
        ctx.mark_non_differentiable(ce, kd)
        return total, ce, kd

    @staticmethod
    def backward(ctx, grad_total: Tensor, _ce: Tensor, _kd: Tensor):
        grad_h, grad_w = ctx.saved_tensors
        if not bool(grad_total == 1):  # avoid a second (V, H) buffer in the usual case
            grad_h = grad_h * grad_total if grad_h is not None else None
            grad_w = grad_w * grad_total if grad_w is not None else None
        return grad_h, grad_w, None, None, None, None, None, None, None, None


def _apply(h: Tensor, w: Tensor, labels: Tensor, make_kd: Callable, v: int, *,
           temperature: float, gamma: float, chunk_size: int | None, ignore_index: int,
           ws_extra: tuple[str, ...], return_parts: bool) -> Tensor | KDLossParts:
    """Validate, flatten the token dims and run the autograd function."""
    if temperature <= 0:
        raise InputError(f"temperature must be > 0, got {temperature}", field="temperature")
    if chunk_size is not None and chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}", field="chunk_size")
    labels = labels.reshape(-1)
    h = h.reshape(-1, h.shape[-1])
    if h.shape[0] != labels.shape[0]:
        raise InputError(f"{h.shape[0]} hidden rows but {labels.shape[0]} labels", field="labels")
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= v))
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise InputError(f"label {int(labels[i])} at row {i} is outside the shared vocabulary "
                         f"[0, {v})", field="labels")
    total, ce, kd = _ChunkedKD.apply(h, w, labels, make_kd, v, temperature, gamma,
                                     chunk_size or auto_chunk_size(v), ignore_index, ws_extra)
    if not return_parts:
        return total
    return KDLossParts(total, ce, kd, int((labels != ignore_index).sum()))


def chunked_kd_loss(student_hidden: Tensor, student_weight: Tensor, teacher_hidden: Tensor,
                    teacher_weight: Tensor, labels: Tensor, *, divergence: str = "fkl",
                    temperature: float = 1.0, gamma: float = 0.2, beta: float | None = None,
                    lam: float | None = None, chunk_size: int | None = None,
                    ignore_index: int = -100, return_parts: bool = False
                    ) -> Tensor | KDLossParts:
    """CE + gamma * T^2 * D(p_T, p_S) from hidden states, never materialising full logits.

    Args:
        student_hidden: (..., H) final hidden states of the student (after the final norm).
        student_weight: (V_s, H) student lm_head weight (no bias).
        teacher_hidden: (..., H_t) teacher hidden states for the same rows; no gradient.
        teacher_weight: (V_t, H_t) teacher lm_head weight; no gradient.
        labels: (...) target token ids aligned with the rows (already shifted);
            ``ignore_index`` rows are excluded from both means.
        divergence: ``fkl`` (default), ``rkl``, ``jsd`` (``beta``), ``skew_fkl``/``skew_rkl``
            (``lam``) or ``tvd``; see :mod:`domdistill.training.divergences`.
        chunk_size: rows per chunk; ``None`` picks :func:`auto_chunk_size` of the vocabulary.
        return_parts: return :class:`KDLossParts` (total, ce, kd, n_tokens) instead of total.
    """
    v = min(student_weight.shape[0], teacher_weight.shape[0])
    th = teacher_hidden.reshape(-1, teacher_hidden.shape[-1]).detach()
    tw = teacher_weight[:v].detach()
    if th.shape[0] != labels.numel():
        raise InputError(f"{th.shape[0]} teacher rows but {labels.numel()} labels",
                         field="teacher_hidden")

    def make_kd(kept: Tensor, ws: dict[str, Tensor]) -> KDChunkFn:
        return _dense_teacher(th[kept], tw, divergence, temperature, beta, lam, ws)

    resolve_divergence(divergence, beta, lam)  # fail before any compute
    return _apply(student_hidden, student_weight, labels, make_kd, v, temperature=temperature,
                  gamma=gamma, chunk_size=chunk_size, ignore_index=ignore_index,
                  ws_extra=("lp", "p"), return_parts=return_parts)


def sparse_kd_loss(student_hidden: Tensor, student_weight: Tensor, topk_ids: Tensor,
                   topk_logprobs: Tensor, labels: Tensor, *, temperature: float = 1.0,
                   gamma: float = 0.2, chunk_size: int | None = None, ignore_index: int = -100,
                   return_parts: bool = False) -> Tensor | KDLossParts:
    """CE + gamma * T^2 * forward KL against an offline top-k teacher, chunked like
    :func:`chunked_kd_loss`.

    The teacher is given per row as ``topk_ids`` (..., k) with distinct ids and
    ``topk_logprobs`` (..., k), taken as they are (produced at the temperature wanted; only the
    student is divided by ``temperature``). The missing tail is a residual bucket: with
    ``P = 1 - sum_k p_k`` (clamped at 0) and ``Q`` the student's mass outside the top-k ids,
    ``D = sum_k p_k log(p_k / q_k) + P log(P / Q)``, the KL between the two distributions
    coarse-grained to k + 1 outcomes (a lower bound of the full forward KL, exact when the
    top-k covers all teacher mass). ``Q`` is summed directly over the tail (no cancellation)
    and floored at 1e-30.
    """
    v = student_weight.shape[0]
    ids = topk_ids.reshape(-1, topk_ids.shape[-1]).long()
    lps = topk_logprobs.reshape(-1, topk_logprobs.shape[-1]).detach()
    if ids.shape != lps.shape or ids.shape[0] != labels.numel():
        raise InputError(f"topk_ids {tuple(ids.shape)} and topk_logprobs {tuple(lps.shape)} "
                         f"must both have one row per label ({labels.numel()})",
                         field="topk_ids")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= v):
        raise InputError(f"top-k ids must lie in [0, {v}), got range "
                         f"[{int(ids.min())}, {int(ids.max())}]", field="topk_ids")

    def make_kd(kept: Tensor, ws: dict[str, Tensor]) -> KDChunkFn:
        return _sparse_teacher(ids[kept], lps[kept])

    return _apply(student_hidden, student_weight, labels, make_kd, v, temperature=temperature,
                  gamma=gamma, chunk_size=chunk_size, ignore_index=ignore_index, ws_extra=(),
                  return_parts=return_parts)
