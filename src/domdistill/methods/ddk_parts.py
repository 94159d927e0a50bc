"""Parts of the DDK recipe (``ddk.py``): validation split, cached teacher perplexities, weight
updates per variant, perplexity metrics and the domain-weight plot."""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path
from typing import Any

from domdistill.config import RunConfig
from domdistill.data.example import DomainExample
from domdistill.data.templates import StudentTemplate
from domdistill.io import atomic_write_json
from domdistill.training import domain_weights as dw

ADAPTIVE = ("ddk", "ddk_wo_fs")
MAX_VAL_SHARE = 0.2  # a domain gives at most this share of its examples to validation


def lm_text(ex: DomainExample) -> str:
    """The plain LM text of an example: input, rationale (MATH: the solution) and answer line."""
    return f"{ex.input}\n{StudentTemplate.completion(ex.rationale, ex.answer)}"


def split_validation(pool: list[DomainExample], per_domain: int, seed: int
                     ) -> tuple[dict[str, list[DomainExample]], dict[str, list[DomainExample]]]:
    """(train, validation) per domain: up to ``per_domain`` held-out examples per domain, at most
    ``MAX_VAL_SHARE`` of it (one at least); a one-example domain shares it with training."""
    groups: dict[str, list[DomainExample]] = {}
    for ex in pool:
        groups.setdefault(ex.domain, []).append(ex)
    train, val = {}, {}
    for d, exs in groups.items():
        exs = list(exs)
        random.Random(f"{seed}:val:{d}").shuffle(exs)
        n_val = max(1, min(per_domain, int(len(exs) * MAX_VAL_SHARE)))
        val[d], train[d] = exs[:n_val], exs[n_val:] or exs[:n_val]
    return train, val


def texts_hash(texts: dict[str, list[str]], max_len: int) -> str:
    h = hashlib.sha256(str(max_len).encode())
    for d in sorted(texts):
        for t in texts[d]:
            h.update(f"{d}\x00{t}\x00".encode())
    return h.hexdigest()[:16]


def model_id(path: str | Path) -> str:
    """A teacher's identity for caches: its path plus the sizes and mtimes of its files."""
    p = Path(path)
    files = sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in p.glob("*")
                   if f.is_file()) if p.is_dir() else []
    return f"{p.resolve() if p.exists() else path}#" + hashlib.sha256(
        repr(files).encode()).hexdigest()[:12]


def cached_perplexities(cache: Path, key: str, compute) -> dict[str, float]:
    """``compute()`` once per key; later calls read ``cache`` (a JSON object keyed by ``key``).
    The file is re-read just before writing, so runs sharing it keep each other's entries."""
    def read() -> dict[str, Any]:
        return json.loads(cache.read_text(encoding="utf-8")) if cache.is_file() else {}

    data = read()
    if key not in data:
        value = compute()
        data = {**read(), key: value}
        atomic_write_json(cache, data)
    return data[key]


def next_weights(method: str, cfg: RunConfig, factor: dict[str, float] | None,
                 student_ppl: dict[str, float], teacher_ppl: dict[str, float]) -> dict[str, float]:
    """The discrepancy factor after a boundary: Eq. 2 (ddk), Eq. 1 (ddk_wo_fs, and for
    logging under fixed mixtures) or the DoReMi-style step (``weight_update: doremi``)."""
    if method == "ddk" and factor is not None:
        if cfg.method.weight_update == "doremi":
            return dw.doremi_update(factor, student_ppl, teacher_ppl)
        return dw.smoothed_update(factor, student_ppl, teacher_ppl, cfg.method.smoothing_alpha)
    return dw.discrepancy_factor(student_ppl, teacher_ppl)


def initial_mixture(method: str, cfg: RunConfig, counts: dict[str, int],
                    factor: dict[str, float] | None) -> dict[str, float]:
    if method == "ddk_es":
        return dw.uniform(counts)
    if method in ADAPTIVE and cfg.method.init_mixture == "uniform":
        return dw.uniform(counts)
    if method in ADAPTIVE and cfg.method.init_mixture == "r0" and factor is not None:
        return dict(factor)
    return dw.natural(counts)


def ppl_metrics(student: dict[str, tuple[float, int, int]], teacher: dict[str, float] | None,
                head_tail: tuple[list[str], list[str]]) -> dict[str, Any]:
    """The ``metrics`` block: per domain ``n``, ``perplexity`` (student), ``teacher_perplexity``
    and ``ppl_ratio``; macro = mean over domains (plus ``worst_ppl_ratio``), micro = over tokens."""
    per = {}
    for d, (nll, tokens, n) in student.items():
        ppl = math.exp(nll / max(tokens, 1))
        per[d] = {"n": n, "tokens": tokens, "perplexity": ppl}
        if teacher:
            per[d]["teacher_perplexity"] = teacher[d]
            per[d]["ppl_ratio"] = ppl / teacher[d]

    def mean(domains: list[str]) -> dict[str, Any]:
        keys = [k for k in ("perplexity", "ppl_ratio") if domains and k in per[domains[0]]]
        return {k: sum(per[d][k] for d in domains) / len(domains) for k in keys}

    macro = mean(list(per))
    if teacher:
        macro["worst_ppl_ratio"] = max(per[d]["ppl_ratio"] for d in per)
    micro = {"perplexity": math.exp(sum(v[0] for v in student.values())
                                    / max(sum(v[1] for v in student.values()), 1))}
    head, tail = head_tail
    return {"n": sum(v[2] for v in student.values()), "per_domain": per, "macro": macro,
            "micro": micro, "head": {"domains": head, **mean(head)},
            "tail": {"domains": tail, **mean(tail)}}
