"""Per-domain metrics with counts, and macro / micro / head / tail aggregates.

Every task reports ``accuracy`` (the parsed answer is correct per ``answers.is_correct``).
On top: classification ``f1`` (scikit-learn), math ``exact_match`` (math-verify equivalence, the
same number as accuracy), free-form QA ``token_f1``, and ``perplexity`` of the gold completion
when token losses are given.

- per domain: the metric over that domain's examples. For classification whose domains are the
  labels (R52, Reuters) a domain's ``f1`` is that class's F1; otherwise the macro-F1 over the
  labels inside the domain.
- macro: mean over domains; classification ``f1`` is scikit-learn's macro-F1 over the gold
  labels (the same thing when domains are labels). Perplexity: mean of per-domain perplexities.
- micro: over examples; ``f1`` is micro-F1 (equals accuracy for single-label tasks);
  perplexity is token-weighted.
- head / tail: mean over the given domains.
- ``macro_ci``: interval of each macro score from replicates of the test set whose outcomes
  are redrawn per domain from Jeffreys-smoothed shares (seeded; see ``_bootstrap``),
  so that a handful of identical outputs does not give an interval of zero width.
- ``no_answer``, ``top_prediction``, ``top_prediction_share`` (overall and per domain): the share
  of outputs without a parsable answer and the most frequent answer; ``warnings`` says when
  either looks wrong.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import f1_score

from domdistill.data.domains import report_head_tail
from domdistill.data.example import DomainDataset, DomainExample
from domdistill.evaluation.answers import extract_answer, is_correct, token_f1

NO_ANSWER = "<no answer>"
OUTPUT_SHAPE = ("no_answer", "top_prediction", "top_prediction_share")  # per domain, not scores


@dataclass(frozen=True)
class Scored:
    """One evaluated example."""

    id: str
    domain: str
    gold: str
    pred: str | None
    correct: bool
    token_f1: float | None = None
    output: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def score_outputs(outputs: Sequence[str], examples: Sequence[DomainExample], task: str,
                  labels: list[str] | None = None) -> list[Scored]:
    """Parse each generated text and compare it with its example's gold answer."""
    rows = []
    for out, ex in zip(outputs, examples, strict=True):
        pred = extract_answer(out, task, labels)
        rows.append(Scored(ex.id, ex.domain, ex.answer, pred, is_correct(pred, ex.answer, task),
                           token_f1(pred, ex.answer) if task == "qa" else None, out))
    return rows


def metric_names(task: str) -> list[str]:
    """The scores reported for a task type (perplexity is added when losses are given)."""
    extra = {"classification": ["f1"], "math": ["exact_match"], "qa": ["token_f1"]}
    return ["accuracy", *extra.get(task, [])]


def _f1_scores(gold: np.ndarray, pred: np.ndarray, n_labels: int) -> np.ndarray:
    """Per-label F1 from integer-coded labels (pred may hold n_labels for 'other')."""
    tp = np.bincount(gold[gold == pred], minlength=n_labels + 1)[:n_labels]
    n_pred = np.bincount(pred, minlength=n_labels + 1)[:n_labels]
    n_gold = np.bincount(gold, minlength=n_labels + 1)[:n_labels]
    denom = n_pred + n_gold
    return np.divide(2 * tp, denom, out=np.zeros(n_labels), where=denom > 0)


class _Table:
    """Per-example arrays grouped by domain, for point estimates and the bootstrap."""

    def __init__(self, rows: Sequence[Scored], task: str):
        self.task = task
        counts = Counter(r.domain for r in rows)
        self.domains = sorted(counts, key=lambda d: (-counts[d], d))
        pos = {d: k for k, d in enumerate(self.domains)}
        self.dom = np.array([pos[r.domain] for r in rows])
        self.correct = np.array([float(r.correct) for r in rows])
        self.tf1 = np.array([r.token_f1 or 0.0 for r in rows]) if task == "qa" else None
        self.gold_labels = sorted({r.gold for r in rows})
        code = {lbl: i for i, lbl in enumerate(self.gold_labels)}
        self.gold = np.array([code[r.gold] for r in rows])
        self.pred = np.array([code.get(r.pred, len(code)) if r.pred is not None else len(code)
                              for r in rows])
        self.label_domains = all(r.gold == r.domain for r in rows)
        self.members = [np.flatnonzero(self.dom == k) for k in range(len(self.domains))]

    def per_domain_scores(self, idx: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Scores per domain (arrays aligned with ``self.domains``) on the given example indices."""
        out = {"accuracy": np.array([self.correct[i].mean() for i in idx])}
        if self.task == "math":
            out["exact_match"] = out["accuracy"]
        if self.tf1 is not None:
            out["token_f1"] = np.array([self.tf1[i].mean() for i in idx])
        if self.task == "classification":
            all_idx = np.concatenate(idx)
            if self.label_domains:
                per_label = _f1_scores(self.gold[all_idx], self.pred[all_idx], len(self.gold_labels))
                code = {lbl: i for i, lbl in enumerate(self.gold_labels)}
                out["f1"] = np.array([per_label[code[d]] for d in self.domains])
            else:
                f1s = []
                for i in idx:
                    present = np.unique(self.gold[i])
                    f1s.append(_f1_scores(self.gold[i], self.pred[i], len(self.gold_labels))[present].mean())
                out["f1"] = np.array(f1s)
        return out

    def macro(self, idx: Sequence[np.ndarray]) -> dict[str, float]:
        scores = self.per_domain_scores(idx)
        out = {k: float(v.mean()) for k, v in scores.items()}
        if self.task == "classification" and not self.label_domains:
            all_idx = np.concatenate(idx)
            present = np.unique(self.gold[all_idx])
            out["f1"] = float(_f1_scores(self.gold[all_idx], self.pred[all_idx],
                                         len(self.gold_labels))[present].mean())
        return out


def compute_metrics(rows: Sequence[Scored], task: str, head: Sequence[str] | None = None,
                    tail: Sequence[str] | None = None,
                    token_losses: Sequence[tuple[float, int]] | None = None,
                    bootstrap: int = 1000, ci_level: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """The ``metrics`` block of ``results.json`` from scored examples.

    ``token_losses`` (summed NLL, token count) per example, aligned with ``rows``, adds
    ``perplexity``. ``head``/``tail`` default to the shared rule (``data.domains.report_head_tail``) on the
    test counts.
    """
    if not rows:
        raise ValueError("no evaluated examples")
    t = _Table(rows, task)
    per = t.per_domain_scores(t.members)
    per_domain: dict[str, dict[str, Any]] = {}
    for k, d in enumerate(t.domains):
        per_domain[d] = {"n": int(len(t.members[k])), **{m: float(v[k]) for m, v in per.items()},
                         **_output_shape([rows[i] for i in t.members[k]])}
    golds = [r.gold for r in rows]
    preds = [r.pred if r.pred is not None else NO_ANSWER for r in rows]
    macro = t.macro(t.members)
    micro: dict[str, float] = {"accuracy": float(t.correct.mean())}
    if task == "math":
        micro["exact_match"] = micro["accuracy"]
    if t.tf1 is not None:
        micro["token_f1"] = float(t.tf1.mean())
    if task == "classification":
        macro["f1"] = float(f1_score(golds, preds, labels=t.gold_labels, average="macro", zero_division=0))
        micro["f1"] = float(f1_score(golds, preds, average="micro", zero_division=0))
    if token_losses is not None:
        nll = np.array([x[0] for x in token_losses], dtype=float)
        ntok = np.array([x[1] for x in token_losses], dtype=float)
        for k, d in enumerate(t.domains):
            i = t.members[k]
            per_domain[d]["perplexity"] = math.exp(nll[i].sum() / max(ntok[i].sum(), 1))
        macro["perplexity"] = float(np.mean([per_domain[d]["perplexity"] for d in t.domains]))
        micro["perplexity"] = math.exp(nll.sum() / max(ntok.sum(), 1))
    if head is None and tail is None:
        head, tail = report_head_tail({d: per_domain[d]["n"] for d in t.domains})
    groups = {"head": list(head or []), "tail": list(tail or [])}
    out: dict[str, Any] = {"n": len(rows), "per_domain": per_domain, "macro": macro, "micro": micro,
                           **_output_shape(rows)}
    for name, doms in groups.items():
        present = [d for d in doms if d in per_domain]
        block: dict[str, Any] = {"domains": present, "n": sum(per_domain[d]["n"] for d in present)}
        if present:
            for m in per_domain[present[0]]:
                if m != "n" and m not in OUTPUT_SHAPE:
                    block[m] = float(np.mean([per_domain[d][m] for d in present]))
        out[name] = block
    if bootstrap > 0:
        out["macro_ci"] = _bootstrap(t, bootstrap, ci_level, seed)
        out["ci_level"] = ci_level
    out["warnings"] = output_warnings(out, rows)
    return out


def _output_shape(rows: Sequence[Scored]) -> dict[str, Any]:
    """What the outputs look like: the share with no parsable answer, the most frequent
    prediction (``<no answer>`` counts as one) and its share."""
    preds = Counter(r.pred if r.pred is not None else NO_ANSWER for r in rows)
    top, count = min(preds.items(), key=lambda kv: (-kv[1], kv[0]))
    return {"no_answer": preds.get(NO_ANSWER, 0) / len(rows), "top_prediction": top,
            "top_prediction_share": count / len(rows)}


def output_warnings(metrics: dict[str, Any], rows: Sequence[Scored], no_answer: float = 0.1,
                    one_label: float = 0.5) -> list[str]:
    """Warnings about the student's outputs: more than ``no_answer`` of them without a parsable
    answer, or one answer given for more than ``one_label`` of the inputs (when the gold answers
    are not that concentrated)."""
    out = []
    n = metrics["n"]
    if metrics["no_answer"] > no_answer:
        worst = sorted(metrics["per_domain"].items(), key=lambda kv: -kv[1]["no_answer"])[:3]
        out.append(f"{metrics['no_answer']:.0%} of the student's {n} test outputs have no "
                   "parsable answer (most in " + ", ".join(
                       f"{d} {b['no_answer']:.0%}" for d, b in worst) + "); read them in the "
                   "run's predictions.jsonl")
    top, share = metrics["top_prediction"], metrics["top_prediction_share"]
    gold = Counter(r.gold for r in rows).get(top, 0) / n
    if top != NO_ANSWER and share > one_label and share > 1.5 * gold:
        out.append(f"the student answers {top!r} for {share:.0%} of the {n} test inputs (the "
                   f"gold answer of {gold:.0%}): it may have collapsed to one answer; read its outputs in "
                   "the run's predictions.jsonl")
    return out


def _bootstrap(t: _Table, n: int, level: float, seed: int) -> dict[str, list[float]]:
    """Percentile intervals of the macro scores over ``n`` replicates of the test set.

    A replicate keeps each domain's size and redraws its outcomes from their shares smoothed by
    a Jeffreys prior (half an observation added to each cell: per (domain, gold label) the
    predicted labels seen plus the gold one for classification, else per domain right and
    wrong). At large n this is the stratified bootstrap; at small n a domain whose outputs all
    agree (all wrong, one label for everything) still carries the uncertainty of its few
    examples instead of an interval of zero width. The smoothing pulls the replicates towards
    the middle, so the interval is their spread around their median placed at the observed
    score (clipped to [0, 1]): it always holds the score. QA token F1 resamples examples within
    each domain."""
    rng = np.random.default_rng(seed)
    if t.task == "classification":
        strata = []
        for members in t.members:
            for g in np.unique(t.gold[members]):
                pos = members[t.gold[members] == g]
                cells, counts = np.unique(np.append(t.pred[pos], g), return_counts=True)
                counts[cells == g] -= 1  # the gold cell is in the prior, not the data
                strata.append((pos, cells, counts + 0.5))
    draws: dict[str, list[float]] = {}
    for _ in range(n):
        rep = copy.copy(t)
        if t.task == "classification":
            rep.pred = t.pred.copy()
            for pos, cells, alpha in strata:
                drawn = rng.multinomial(len(pos), alpha / alpha.sum())
                rep.pred[pos] = np.repeat(cells, drawn)
            rep.correct = (rep.pred == t.gold).astype(float)
        else:
            rep.correct = np.zeros_like(t.correct)
            for members in t.members:
                k = t.correct[members].sum()
                hits = rng.binomial(len(members), (k + 0.5) / (len(members) + 1))
                rep.correct[members[:hits]] = 1.0
        if t.tf1 is not None:
            rep.tf1 = t.tf1.copy()
            for members in t.members:
                rep.tf1[members] = t.tf1[members[rng.integers(0, len(members), len(members))]]
        for k, v in rep.macro(t.members).items():
            draws.setdefault(k, []).append(v)
    observed = t.macro(t.members)
    out = {}
    for k, v in draws.items():  # the replicates' spread around their median, placed at the score
        lo, mid, hi = np.percentile(v, [(1 - level) / 2 * 100, 50, (1 + level) / 2 * 100])
        out[k] = [float(max(0.0, observed[k] - (mid - lo))), float(min(1.0, observed[k] + (hi - mid)))]
    return out


def cap_per_domain(dataset: DomainDataset, limit: int | None) -> list[DomainExample]:
    """At most ``limit`` examples per domain, in dataset order."""
    if limit is None:
        return list(dataset)
    seen: dict[str, int] = {}
    out = []
    for ex in dataset:
        if seen.get(ex.domain, 0) < limit:
            seen[ex.domain] = seen.get(ex.domain, 0) + 1
            out.append(ex)
    return out


def evaluate_model(model: Any, tokenizer: Any, dataset: DomainDataset, task: str, template: Any,
                   cfg: Any, labels: list[str] | None = None, head: Sequence[str] | None = None,
                   tail: Sequence[str] | None = None, progress: bool = True,
                   predictions_path: str | Path | None = None) -> dict[str, Any]:
    """Generate answers for ``dataset`` and score them per domain (the ``metrics`` block).

    ``cfg`` is an ``EvaluationConfig``. ``predictions_path`` gets one JSON line per example.
    """
    from domdistill.evaluation.generate import generate
    from domdistill.io import atomic_write_text

    examples = cap_per_domain(dataset, cfg.max_per_domain)
    if not examples:
        raise ValueError(f"{dataset.name}: no examples to evaluate")
    prompts, _ = template.prompts(tokenizer, [ex.input for ex in examples])  # cut like training
    outputs = generate(model, tokenizer, prompts,
                       max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, progress=progress)
    rows = score_outputs(outputs, examples, task, labels)
    losses = None
    if cfg.perplexity:
        from domdistill.selection.scoring import completion_stats

        completions = [template.completion(ex.rationale, ex.answer) for ex in examples]
        stats = completion_stats(model, tokenizer, prompts, completions, batch_size=cfg.batch_size)
        losses = [(s.nll, s.tokens) for s in stats]
    metrics = compute_metrics(rows, task, head, tail, losses, cfg.bootstrap, cfg.ci_level, cfg.seed)
    if predictions_path is not None:
        import json

        atomic_write_text(predictions_path, "".join(json.dumps(r.to_dict()) + "\n" for r in rows))
    return metrics
