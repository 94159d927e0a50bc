"""Token-level divergences between teacher and student next-token distributions.

Notation, per token: ``p`` is the teacher distribution and ``q`` the student's, both at
temperature ``T`` (softmax of logits / T); ``lp``/``lq`` are their logs; ``z`` are the student's
logits divided by ``T``.

============  =====================================  ==========================================
name          D(p, q)                                parameter
============  =====================================  ==========================================
``fkl``       KL(p || q)  (forward KL, the default)  none
``rkl``       KL(q || p)  (reverse KL, MiniLLM)      none
``jsd``       beta KL(p||m) + (1-beta) KL(q||m),     ``beta`` in [0, 1], default 0.5.
              m = beta p + (1-beta) q                TRL's GKD convention: beta = 0 is exactly
                                                     ``fkl`` and beta = 1 exactly ``rkl`` (the
                                                     formula itself tends to beta KL(p||q) -> 0
                                                     as beta -> 0); beta = 0.5 is the usual JSD.
``skew_fkl``  KL(p || lam p + (1-lam) q)  (skew)     ``lam`` in [0, 1), default 0.1 (DistiLLM)
``skew_rkl``  KL(q || lam q + (1-lam) p)  (skew)     ``lam`` in [0, 1), default 0.1
``tvd``       0.5 sum |p - q|  (total variation)     none
============  =====================================  ==========================================

Each divergence is a function ``(lq, q, lp, p, out, param) -> D`` over a chunk of rows: it
returns D per row and writes dD/dz into ``out`` (same shape as ``q``), using ``out`` as scratch so
that the chunked loss allocates nothing per chunk. Most write r = dD/dlog q and call
:func:`project`, which applies the softmax Jacobian: dD/dz = r - q * sum(r).

:func:`full_logit_kd_loss` is a plain autograd implementation written straight from these
definitions; it materialises full logits and serves as the reference for tests and benchmarks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from domdistill.errors import ConfigError

# exp() of very negative float32 inputs takes a slow underflow path on CPU; values below this
# floor are raised to it first (the change is under 2e-35 absolute per element).
EXP_FLOOR = -80.0

DivergenceFn = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, float], Tensor]


def rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Per-row dot product of two (n, V) matrices without materialising ``a * b``."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def project(r: Tensor, q: Tensor) -> Tensor:
    """In place, turn r = dD/dlog q into dD/dz = r - q * sum(r) (softmax Jacobian)."""
    return r.addcmul_(q, r.sum(-1, keepdim=True), value=-1.0)


def _log_mix(la: Tensor, lb: Tensor, w: float, out: Tensor) -> Tensor:
    """log(w * exp(la) + (1 - w) * exp(lb)) into ``out``, finite when ``lb`` is (0 < w < 1)."""
    torch.add(la, math.log(w), out=out)
    return torch.logaddexp(out, lb + math.log1p(-w), out=out)


def fkl(lq: Tensor, q: Tensor, lp: Tensor, p: Tensor, out: Tensor, param: float = 0.0) -> Tensor:
    """Forward KL(p || q); dD/dz = q - p."""
    torch.sub(q, p, out=out)
    return rowdot(p, lp) - rowdot(p, lq)


def rkl(lq: Tensor, q: Tensor, lp: Tensor, p: Tensor, out: Tensor, param: float = 0.0) -> Tensor:
    """Reverse KL(q || p); dD/dz = q * (log q - log p - D)."""
    torch.sub(lq, lp, out=out)
    d = rowdot(q, out)
    out.sub_(d.unsqueeze(1)).mul_(q)
    return d


def jsd(lq: Tensor, q: Tensor, lp: Tensor, p: Tensor, out: Tensor, param: float = 0.5) -> Tensor:
    """Generalized JSD; dD/dlog q = (1 - beta) * q * (log q - log m)."""
    beta = param
    if beta == 0.0:
        return fkl(lq, q, lp, p, out)
    if beta == 1.0:
        return rkl(lq, q, lp, p, out)
    lm = _log_mix(lp, lq, beta, out)
    d = beta * (rowdot(p, lp) - rowdot(p, lm)) + (1 - beta) * (rowdot(q, lq) - rowdot(q, lm))
    torch.sub(lq, lm, out=out).mul_(q).mul_(1 - beta)
    project(out, q)
    return d


def sfkl(lq: Tensor, q: Tensor, lp: Tensor, p: Tensor, out: Tensor, param: float = 0.1) -> Tensor:
    """Skew forward KL(p || m), m = lam p + (1-lam) q; dD/dlog q = -(1-lam) p q / m."""
    lam = param
    if lam == 0.0:
        return fkl(lq, q, lp, p, out)
    lm = _log_mix(lp, lq, lam, out)
    d = rowdot(p, lp) - rowdot(p, lm)
    torch.sub(lq, lm, out=out).add_(lp).clamp_(min=EXP_FLOOR).exp_().mul_(lam - 1.0)
    project(out, q)
    return d


def srkl(lq: Tensor, q: Tensor, lp: Tensor, p: Tensor, out: Tensor, param: float = 0.1) -> Tensor:
    """Skew reverse KL(q || m), m = lam q + (1-lam) p; dD/dlog q = q (u - lam e^u), u = log q/m.

    (The "+ q" term of the exact derivative sums to one and vanishes under :func:`project`.)
    """
    lam = param
    if lam == 0.0:
        return rkl(lq, q, lp, p, out)
    u = torch.sub(lq, _log_mix(lq, lp, lam, out), out=out)
    d = rowdot(q, u)
    u.sub_(u.exp().mul_(lam)).mul_(q)
    project(u, q)
    return d


def tv(lq: Tensor, q: Tensor, lp: Tensor, p: Tensor, out: Tensor, param: float = 0.0) -> Tensor:
    """Total variation 0.5 * sum |p - q|; dD/dlog q = 0.5 q sign(q - p)."""
    torch.sub(q, p, out=out)
    d = 0.5 * torch.linalg.vector_norm(out, ord=1, dim=-1)
    out.sign_().mul_(q).mul_(0.5)
    project(out, q)
    return d


@dataclass(frozen=True)
class Divergence:
    """A registered divergence: its chunk function, parameter name and default value."""

    fn: DivergenceFn
    param_name: str | None = None
    default: float = 0.0
    low: float = 0.0
    high: float = 1.0


DIVERGENCES: dict[str, Divergence] = {
    "fkl": Divergence(fkl),
    "rkl": Divergence(rkl),
    "jsd": Divergence(jsd, "beta", 0.5),
    "skew_fkl": Divergence(sfkl, "lam", 0.1, high=0.999999),
    "skew_rkl": Divergence(srkl, "lam", 0.1, high=0.999999),
    "tvd": Divergence(tv),
}


def resolve_divergence(name: str, beta: float | None = None,
                       lam: float | None = None) -> tuple[DivergenceFn, float]:
    """Look up ``name`` and validate its parameter; returns ``(fn, param)``."""
    if name not in DIVERGENCES:
        raise ConfigError(f"unknown divergence '{name}'; expected one of {sorted(DIVERGENCES)}",
                          field="divergence")
    div = DIVERGENCES[name]
    given = {"beta": beta, "lam": lam}
    if div.param_name is None:
        return div.fn, 0.0
    value = given[div.param_name]
    value = div.default if value is None else float(value)
    if not div.low <= value <= div.high:
        raise ConfigError(f"{div.param_name} for '{name}' must be in [{div.low}, {div.high:g}], "
                          f"got {value}", field=div.param_name)
    return div.fn, value


# --- reference implementation (full logits, plain autograd) ---------------------------------

def _reference_divergence(name: str, lq: Tensor, lp: Tensor, param: float) -> Tensor:
    """D(p, q) per row, written directly from the definitions above."""
    q, p = lq.exp(), lp.exp()
    if name == "jsd" and param in (0.0, 1.0):
        name = "fkl" if param == 0.0 else "rkl"
    if name in ("skew_fkl", "skew_rkl") and param == 0.0:
        name = name.removeprefix("skew_")
    if name == "fkl":
        return (p * (lp - lq)).sum(-1)
    if name == "rkl":
        return (q * (lq - lp)).sum(-1)
    if name == "jsd":
        lm = (param * p + (1 - param) * q).log()
        return param * (p * (lp - lm)).sum(-1) + (1 - param) * (q * (lq - lm)).sum(-1)
    if name == "skew_fkl":
        return (p * (lp - (param * p + (1 - param) * q).log())).sum(-1)
    if name == "skew_rkl":
        return (q * (lq - (param * q + (1 - param) * p).log())).sum(-1)
    if name == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    raise ConfigError(f"unknown divergence '{name}'", field="divergence")


def full_logit_kd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, *,
                       divergence: str = "fkl", temperature: float = 1.0, gamma: float = 0.2,
                       beta: float | None = None, lam: float | None = None,
                       ignore_index: int = -100) -> tuple[Tensor, Tensor, Tensor]:
    """Reference CE + gamma * T^2 * D on full (N, V) logits; returns ``(total, ce, kd)``.

    Both means run over tokens whose label is not ``ignore_index``. Logits are sliced to the
    shared vocabulary ``min(V_s, V_t)``, as in the chunked loss.
    """
    _, param = resolve_divergence(divergence, beta, lam)
    v = min(student_logits.shape[-1], teacher_logits.shape[-1])
    s = student_logits.reshape(-1, student_logits.shape[-1])[:, :v]
    t = teacher_logits.reshape(-1, teacher_logits.shape[-1])[:, :v].to(s.dtype)
    labels = labels.reshape(-1)
    keep = labels != ignore_index
    s, t, labels = s[keep], t[keep], labels[keep]
    n = max(int(keep.sum()), 1)
    ce = F.cross_entropy(s, labels, reduction="sum") / n
    lq = F.log_softmax(s / temperature, dim=-1)
    lp = F.log_softmax(t / temperature, dim=-1)
    kd = temperature ** 2 * _reference_divergence(divergence, lq, lp, param).sum() / n
    return ce + gamma * kd, ce, kd


def sparse_reference_fkl(student_logits: Tensor, topk_ids: Tensor, topk_logprobs: Tensor,
                         labels: Tensor, *, temperature: float = 1.0, gamma: float = 0.2,
                         ignore_index: int = -100) -> tuple[Tensor, Tensor, Tensor]:
    """Reference of the sparse forward KL with a residual tail bucket (see ``sparse_kd_loss``)."""
    s = student_logits.reshape(-1, student_logits.shape[-1])
    labels = labels.reshape(-1)
    keep = labels != ignore_index
    s, labels = s[keep], labels[keep]
    ids = topk_ids.reshape(-1, topk_ids.shape[-1])[keep]
    lpk = topk_logprobs.reshape(-1, topk_logprobs.shape[-1])[keep].to(s.dtype)
    n = max(int(keep.sum()), 1)
    ce = F.cross_entropy(s, labels, reduction="sum") / n
    lq = F.log_softmax(s / temperature, dim=-1)
    lqk = lq.gather(1, ids)
    pk = lpk.exp()
    p_rest = (1 - pk.sum(-1)).clamp(min=0)
    q_rest = (1 - lqk.exp().sum(-1)).clamp(min=1e-30)
    d = (pk * (lpk - lqk)).sum(-1) + torch.xlogy(p_rest, p_rest) - p_rest * q_rest.log()
    kd = temperature ** 2 * d.sum() / n
    return ce + gamma * kd, ce, kd
