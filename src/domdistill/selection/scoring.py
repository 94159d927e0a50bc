"""Student-side scores for choosing which head-domain inputs the teacher annotates.

IFD (Li et al. 2024, as used by BalDistill): the student writes its own rationale y for input x,
then ``IFD = PPL(y | x) / PPL(y)``; a higher value means the prompt helps less, i.e. the student
is less sure. Predictive entropy: the mean per-token entropy of the student's own rationale.
Both are free: no teacher call is made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from domdistill import distributed as dist
from domdistill.data.example import DomainExample
from domdistill.data.templates import StudentTemplate

EMPTY_SCORE = math.inf  # an empty generation is maximally uncertain: select it first


@dataclass(frozen=True)
class SequenceStats:
    """Summed negative log-likelihood, summed entropy and token count of one completion."""

    nll: float
    entropy: float
    tokens: int

    @property
    def mean_nll(self) -> float:
        return self.nll / self.tokens if self.tokens else math.nan


@torch.no_grad()
def completion_stats(model, tokenizer, prompts: Sequence[str], completions: Sequence[str],
                     batch_size: int = 16, max_length: int | None = None) -> list[SequenceStats]:
    """NLL and entropy of each completion given its prompt (prompt tokens are not scored).

    Sequences are encoded exactly as for training (``training.data.encode_pair``); an empty
    prompt scores the completion alone, after the BOS token. Batches are right-padded; inside
    :func:`domdistill.distributed.sharded` they are split over the processes and every process
    gets all results.
    """
    from domdistill.training.data import IGNORE_INDEX, encode_pair, pad_id

    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    limit = max_length or 1 << 30
    rows = []
    for p, c in zip(prompts, completions):
        enc = encode_pair(tokenizer, p, c, limit)  # the same encoding as training
        rows.append((enc["input_ids"], [lbl != IGNORE_INDEX for lbl in enc["labels"]]))
    out: dict[int, SequenceStats] = {}
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    was_training = model.training
    model.eval()
    for idx in dist.my_batches([order[s:s + batch_size] for s in range(0, len(order), batch_size)]):
        width = max(len(rows[i][0]) for i in idx)
        input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
        attention = torch.zeros((len(idx), width), dtype=torch.long)
        scored = torch.zeros((len(idx), width), dtype=torch.bool)
        for r, i in enumerate(idx):
            ids, is_target = rows[i]
            input_ids[r, :len(ids)] = torch.tensor(ids)
            attention[r, :len(ids)] = 1
            scored[r, :len(ids)] = torch.tensor(is_target)
            scored[r, 0] = False  # the first token has no prediction
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        target = input_ids[:, 1:].to(device)
        mask = scored[:, 1:].to(device)
        nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1) * mask
        ent = -(logp.exp() * logp).sum(-1) * mask
        for r, i in enumerate(idx):
            out[i] = SequenceStats(float(nll[r].sum()), float(ent[r].sum()), int(mask[r].sum()))
    model.train(was_training)
    out = dist.gather_rows(out)
    return [out[i] for i in range(len(rows))]


def ifd_scores(model, tokenizer, prompts: Sequence[str], generations: Sequence[str],
               batch_size: int = 16) -> list[float]:
    """``PPL(y|x) / PPL(y)`` for each (prompt, own generation) pair; empty generations get +inf."""
    cond = completion_stats(model, tokenizer, prompts, generations, batch_size)
    alone = completion_stats(model, tokenizer, [""] * len(generations), generations, batch_size)
    scores = []
    for g, c, a in zip(generations, cond, alone):
        if not g.strip() or not c.tokens or not a.tokens:
            scores.append(EMPTY_SCORE)
        else:
            scores.append(math.exp(c.mean_nll - a.mean_nll))
    return scores


def entropy_scores(model, tokenizer, prompts: Sequence[str], generations: Sequence[str],
                   batch_size: int = 16) -> list[float]:
    """Mean predictive entropy of the student over its own rationale tokens."""
    stats = completion_stats(model, tokenizer, prompts, generations, batch_size)
    return [EMPTY_SCORE if not g.strip() or not s.tokens else s.entropy / s.tokens
            for g, s in zip(generations, stats)]


def score_examples(model, tokenizer, examples: Sequence[DomainExample], template: StudentTemplate,
                   method: str = "ifd", max_new_tokens: int = 200, batch_size: int = 16,
                   progress: bool = False) -> list[float]:
    """Let the student write its own rationale for each input, then score it (``ifd``/``entropy``)."""
    from domdistill.evaluation.generate import generate

    if not examples:
        return []
    prompts, _ = template.prompts(tokenizer, [ex.input for ex in examples])  # cut like training
    outputs = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                       batch_size=batch_size, progress=progress)
    fn = {"ifd": ifd_scores, "entropy": entropy_scores}[method]
    return fn(model, tokenizer, prompts, outputs, batch_size)
