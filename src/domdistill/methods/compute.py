"""The student's side of a planned run, before it is spent: per stage, the examples and tokens
it trains on and the generations it writes for scoring and evaluation; with a probe, the seconds
each takes on this machine (one timed training step and two timed generation batches)."""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from domdistill.config import RunConfig
from domdistill.data.example import DomainExample
from domdistill.data.quotas import StagePlan
from domdistill.evaluation.metrics import cap_per_domain
from domdistill.methods.baldistill import RECIPES
from domdistill.methods.task import Task

PROBE_NEW_TOKENS = 8  # decoding steps timed to price one more generated token


@dataclass
class Probe:
    """Seconds measured on this machine with the configured student."""

    load: float                 # loading the student once (each phase loads it)
    train_step: float           # one optimizer micro-batch of training.batch_size sequences
    prefill: float              # one evaluation batch: the prompts and the first new token
    decode_step: float          # one evaluation batch: each further new token

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in vars(self).items()}


def example_tokens(task: Task, tokenizer: Any, samples: list[DomainExample],
                   with_rationale: bool, max_seq_len: int) -> float:
    """Mean training sequence length (prompt and answer, as trained) over ``samples``."""
    from domdistill.training.data import encode_pair

    pairs, _ = task.template.pairs(tokenizer, samples, with_rationale=with_rationale)
    lengths = [len(encode_pair(tokenizer, p, c, max_seq_len)["input_ids"]) for p, c in pairs]
    return sum(lengths) / len(lengths) if lengths else 0.0


def stage_work(cfg: RunConfig, task: Task, stages: list[StagePlan], mean_tokens: float
               ) -> list[dict[str, Any]]:
    """Per stage: training examples (cumulative, as each stage retrains on all so far), optimizer
    steps, training tokens, scoring and evaluation generations."""
    recipe = RECIPES[cfg.method.name]
    tc, m = cfg.training, cfg.method
    evals = len(cap_per_domain(task.test, cfg.evaluation.max_per_domain))
    if not recipe.train:
        return [{"stage": 0, "train_examples": 0, "train_steps": 0, "train_tokens": 0,
                 "scoring_generations": 0, "evaluation_generations": evals}]
    left, examples, rows = dict(task.pool.counts()), 0, []
    for plan in stages:
        scoring = 0
        if recipe.selection == "score" and m.selection != "random" and plan.stage > 1:
            for d in (list(left) if recipe.pool_wide else plan.head):
                want = left[d] if m.score_candidates is None else max(m.score_candidates,
                                                                       plan.quotas.get(d, 0))
                scoring += min(left[d], want)
        real = plan.real
        new = sum(real.values()) + (sum(plan.shortfall.values()) if recipe.tail != "none" else 0)
        examples = examples + new if m.retrain == "fresh" else new
        for d, n in real.items():
            left[d] = left.get(d, 0) - n
        steps = tc.max_steps or math.ceil(tc.epochs * examples / (tc.batch_size * tc.grad_accum))
        rows.append({"stage": plan.stage, "train_examples": examples, "train_steps": steps,
                     "train_tokens": round(steps * tc.batch_size * tc.grad_accum
                                           * min(mean_tokens, tc.max_seq_len)),
                     "scoring_generations": scoring, "evaluation_generations": evals})
    return rows


def add_seconds(cfg: RunConfig, rows: list[dict[str, Any]], probe: Probe) -> None:
    """Each stage's expected seconds from the probe (generation priced at its full length, so an
    upper bound where outputs end earlier)."""
    bs = cfg.evaluation.batch_size

    def generating(n: int, new_tokens: int) -> float:
        return math.ceil(n / bs) * (probe.prefill + (new_tokens - 1) * probe.decode_step)

    for r in rows:
        train = (r["train_steps"] * cfg.training.grad_accum * probe.train_step
                 + (probe.load if r["train_steps"] else 0))
        # scoring: the student's own rationale, then two forward passes over it (IFD)
        score = (generating(r["scoring_generations"], cfg.method.score_max_new_tokens)
                 + 2 * math.ceil(r["scoring_generations"] / bs) * probe.prefill
                 + probe.load) if r["scoring_generations"] else 0.0
        evaluate = generating(r["evaluation_generations"], cfg.evaluation.max_new_tokens) + probe.load
        r["seconds"] = {"train": round(train, 2), "score": round(score, 2),
                        "evaluate": round(evaluate, 2), "total": round(train + score + evaluate, 2)}


def measure_probe(cfg: RunConfig, task: Task, samples: list[DomainExample],
                  with_rationale: bool) -> Probe:
    """Load the student and time a training micro-batch (after a one-sequence warm-up) and two
    generation batches (1 and ``1 + PROBE_NEW_TOKENS`` new tokens) on inputs from the pool;
    writes nothing that stays."""
    # torch and the model stack load only when a probe is asked for: the plain dry run stays fast
    import torch

    from domdistill.data.templates import prompt_ids
    from domdistill.methods.students import tokenizer_texts
    from domdistill.models.loading import load_student
    from domdistill.training.data import PadCollator, encode_pair, pad_id

    tc = cfg.training
    if tc.cpu_threads:  # as the run will train
        torch.set_num_threads(tc.cpu_threads)
    with tempfile.TemporaryDirectory(prefix="domdistill-probe-") as tmp:
        start = time.perf_counter()
        model, tok = load_student(cfg.student, texts=tokenizer_texts(task), cache_dir=tmp)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = model.to(device)
        load = time.perf_counter() - start
    examples = (samples or list(task.pool))[:tc.batch_size]
    examples = (examples * math.ceil(tc.batch_size / len(examples)))[:tc.batch_size]
    pairs, _ = task.template.pairs(tok, examples, with_rationale=with_rationale)
    batch = PadCollator(pad_id(tok))([encode_pair(tok, p, c, tc.max_seq_len) for p, c in pairs])
    batch = {k: v.to(device) for k, v in batch.items()}
    def sync() -> None:  # GPU kernels run asynchronously: wait before reading the clock
        if device == "cuda":
            torch.cuda.synchronize()

    model.train()
    model(**{k: v[:1] for k, v in batch.items()}).loss.backward()  # warm-up: allocations, kernels
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    model(**batch).loss.backward()
    sync()
    train_step = time.perf_counter() - start
    model.zero_grad(set_to_none=True)

    model.eval()
    prompts, _ = task.template.prompts(tok, [ex.input for ex in examples])
    encoded = [prompt_ids(tok, p) for p in (prompts * math.ceil(cfg.evaluation.batch_size
                                                                / len(prompts)))]
    encoded = encoded[:cfg.evaluation.batch_size]
    width, pad = max(len(e) for e in encoded), pad_id(tok)
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)

    def timed(new_tokens: int) -> float:
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
        sync()
        return time.perf_counter() - start

    prefill = timed(1)  # the training step above warmed the kernels up
    decode_step = max(0.0, timed(1 + PROBE_NEW_TOKENS) - prefill) / PROBE_NEW_TOKENS
    return Probe(load=load, train_step=train_step, prefill=prefill, decode_step=decode_step)


def estimate_student_compute(cfg: RunConfig, task: Task, plan: Any, tokenizer: Any,
                             probe: bool = False) -> None:
    """Fill ``plan.compute`` (and, probed, ``plan.probe`` and each stage's seconds). Training
    sequences are measured on ``plan.samples``; where no rationale is known yet, the answer is
    taken as long as ``teacher.max_tokens`` allows (an upper bound)."""
    samples = plan.samples or list(task.pool)[:300]
    mean = example_tokens(task, tokenizer, samples, plan.rationale, cfg.training.max_seq_len)
    if plan.rationale and not any(ex.rationale for ex in samples):
        mean += cfg.teacher.max_tokens
    plan.compute = stage_work(cfg, task, plan.stages, mean)
    if probe:
        measured = measure_probe(cfg, task, samples, plan.rationale)
        plan.probe = measured.to_dict()
        add_seconds(cfg, plan.compute, measured)
