"""DDK vs its baselines on long-tailed MATH with tiny Llamas (CPU), over several seeds.

The 7 MATH subjects are the domains; the training pool is MATH train resampled Zipf(1.1)
(algebra 1744 ... precalculus 205). Per seed (which also draws the pool), a tiny teacher is
trained by CPT on the whole pool (cached under OUT/seed-S/teacher), then a smaller student with
the teacher's tokenizer is trained from scratch by CPT, KD, DDK-ES, DDK w/o smoothing and DDK,
all with the same steps and batch (equal sequences; the tokens each saw are reported). Reported
per domain: student perplexity on MATH test problems + solutions and its ratio to the teacher's;
per method the mean and the worst ratio over domains, for each seed and averaged over seeds.
Runs go to ``--jobs`` worker processes (one thread each): the teachers first, then the students.

    python bench/ddk_tiny.py                 # default preset, seeds 0 1 2 (~13 min on 2 cores)
    python bench/ddk_tiny.py --preset quick  # a few minutes

Last line: ``SUMMARY {json}`` with ``methods``: name -> ``mean_ratio``, ``worst_ratio`` (means
over the seeds) and the per-seed values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MATH = REPO.parent / "shared" / "data" / "math" / "MATH.tar.gz"
METHODS = ("cpt", "kd", "ddk_es", "ddk_wo_fs", "ddk")
PRESETS = {
    "default": dict(teacher="tiny", teacher_steps=500, student="micro", steps=400, interval=20,
                    val=50, test=100, seq=128, warm=0),
    "quick": dict(teacher="micro", teacher_steps=80, student="nano", steps=60, interval=10,
                  val=20, test=30, seq=96, warm=0),
}


def settings(p: dict[str, Any], data_path: Path, seed: int) -> tuple[dict, dict]:
    data = {"path": str(data_path), "format": "math", "split": "train",
            "test_path": str(data_path), "test_format": "math", "task": "math",
            "zipf_alpha": 1.1, "max_test_per_domain": p["test"], "seed": seed}
    training = {"learning_rate": 3e-3, "batch_size": 16, "max_seq_len": p["seq"],
                "warmup_ratio": 0.05, "schedule": "cosine", "max_grad_norm": 1.0,
                "weight_decay": 0.1, "cpu_threads": 1, "save_total_limit": 1,
                "logging_steps": 10, "seed": seed}
    return data, training


def make_teacher(p: dict[str, Any], data_path: Path, seed: int, out: Path) -> tuple[str, str]:
    """(teacher folder, student to start from) for one seed, trained once and cached."""
    from domdistill.methods.ddk_demo import ensure_teacher, teacher_config

    data, training = settings(p, data_path, seed)
    teacher = ensure_teacher(teacher_config(data, training, p["teacher"], p["teacher_steps"], 3e-3),
                             out / "teacher")
    student = p["student"]
    if p["warm"]:  # the same pretrained student for every method (its tokenizer is the teacher's)
        student = str(ensure_teacher(teacher_config(data, training, p["student"], p["warm"], 3e-3),
                                     out / "student_base"))
    return str(teacher), student


def run_method(p: dict[str, Any], data_path: Path, seed: int, out: Path, name: str,
               teacher: str, student: str) -> dict[str, Any]:
    """One distillation run; returns its results.json content plus the wall seconds."""
    from domdistill.config import config_from_dict
    from domdistill.methods import run_config
    from domdistill.methods.ddk_demo import student_config

    data, training = settings(p, data_path, seed)
    raw = student_config(name, data, training, Path(teacher), student, p["steps"], p["interval"],
                         p["val"], out)
    t0 = time.time()
    res = run_config(config_from_dict(raw, source="bench/ddk_tiny.py"), overwrite=True,
                     progress=False)
    res["bench_seconds"] = round(time.time() - t0, 1)
    m = res["metrics"]["macro"]
    print(f"seed {seed} {name}: mean ratio {m['ppl_ratio']:.4f}, worst {m['worst_ppl_ratio']:.4f} "
          f"({res['bench_seconds']} s)", file=sys.stderr, flush=True)
    return res


def _init_worker() -> None:
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()  # no save/load bars from two workers at once


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_ddk_tiny",
                    help="folder for the teacher caches and one run folder per seed and method")
    ap.add_argument("--data", type=Path, default=MATH, help="MATH tree or .tar.gz")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="each seed draws its own Zipf pool, teacher and students")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (one thread each)")
    ap.add_argument("--steps", type=int, help="student optimizer steps (override the preset)")
    ap.add_argument("--warm-start", type=int, help="first pretrain the student by CPT for this "
                    "many steps (natural mixture, cached) and start every method from it, as "
                    "DDK starts from a pretrained student (default: from scratch)")
    args = ap.parse_args()
    p = dict(PRESETS[args.preset])
    if args.steps:
        p["steps"] = args.steps
    if args.warm_start is not None:
        p["warm"] = args.warm_start
    start = time.time()
    folders = {s: args.out / f"seed-{s}" for s in args.seeds}
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn"),
                             initializer=_init_worker) as pool:
        teachers = {s: pool.submit(make_teacher, p, args.data, s, folders[s]) for s in args.seeds}
        starts = {s: job.result() for s, job in teachers.items()}
        print(f"teachers ready ({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
        jobs = {(s, n): pool.submit(run_method, p, args.data, s, folders[s], n, *starts[s])
                for s in args.seeds for n in args.methods}
        results = {key: job.result() for key, job in jobs.items()}
    for s in args.seeds:
        print(f"\nseed {s}")
        print_table({n: results[(s, n)] for n in args.methods})
    summary = summarize(results, args, p, time.time() - start)
    print_means(summary)
    print("SUMMARY " + json.dumps(summary))


def summarize(results: dict[tuple[int, str], dict], args: Any, p: dict[str, Any],
              wall: float) -> dict[str, Any]:
    methods = method_summaries(results, args.seeds, args.methods)
    summary: dict[str, Any] = {
        "preset": args.preset, "seeds": args.seeds, "teacher": p["teacher"],
        "student": p["student"], "steps": p["steps"], "interval_steps": p["interval"],
        "warm_start_steps": p["warm"], "sequences_per_method": p["steps"] * 16,
        "methods": methods, "wall_seconds": round(wall, 1)}
    if "kd" in methods and "ddk" in methods:
        summary["ddk_beats_kd"] = ddk_beats_kd(methods["ddk"], methods["kd"])
    return summary


def method_summaries(results: dict[tuple[int, str], dict], seeds: list[int],
                     names: list[str]) -> dict[str, dict[str, Any]]:
    """Per method: mean and worst ratio over domains, averaged over seeds, and per seed."""
    def per_seed(name: str, key: str) -> list[float]:
        return [round(results[(s, name)]["metrics"]["macro"][key], 4) for s in seeds]

    methods = {}
    for n in names:
        mean, worst = per_seed(n, "ppl_ratio"), per_seed(n, "worst_ppl_ratio")
        methods[n] = {"mean_ratio": round(statistics.fmean(mean), 4),
                      "worst_ratio": round(statistics.fmean(worst), 4),
                      "mean_ratio_per_seed": mean, "worst_ratio_per_seed": worst,
                      "tokens": [results[(s, n)]["training"]["tokens"] for s in seeds],
                      "seconds": [results[(s, n)]["bench_seconds"] for s in seeds]}
    return methods


def ddk_beats_kd(ddk: dict[str, Any], kd: dict[str, Any]) -> dict[str, Any]:
    """Whether DDK's seed-mean ratios are lower than KD's, and on how many seeds."""
    return {"mean": ddk["mean_ratio"] < kd["mean_ratio"],
            "worst": ddk["worst_ratio"] < kd["worst_ratio"],
            "seeds_mean": sum(a < b for a, b in zip(ddk["mean_ratio_per_seed"], kd["mean_ratio_per_seed"])),
            "seeds_worst": sum(a < b for a, b in zip(ddk["worst_ratio_per_seed"], kd["worst_ratio_per_seed"]))}


def print_table(results: dict[str, dict]) -> None:
    """Per-domain student perplexity and student/teacher ratio, one column pair per method."""
    first = next(iter(results.values()))
    counts = first["dataset"]["domain_counts"]
    per = first["metrics"]["per_domain"]
    names = list(results)
    print(f"{'domain':26} {'pool':>5} {'teacher':>8} " + " ".join(f"{n:>17}" for n in names))
    print(f"{'':26} {'':>5} {'ppl':>8} " + " ".join(f"{'ppl / ratio':>17}" for _ in names))
    for d in sorted(per, key=lambda d: -counts.get(d, 0)):
        cells = [results[n]["metrics"]["per_domain"][d] for n in names]
        print(f"{d:26} {counts.get(d, 0):>5} {per[d]['teacher_perplexity']:>8.3f} "
              + " ".join(f"{c['perplexity']:>9.3f} / {c['ppl_ratio']:.3f}" for c in cells))
    for key, label in (("ppl_ratio", "mean ratio"), ("worst_ppl_ratio", "worst ratio")):
        print(f"{label:26} {'':>5} {'':>8} " + " ".join(
            f"{results[n]['metrics']['macro'][key]:>17.4f}" for n in names))


def print_means(summary: dict[str, Any]) -> None:
    """Mean and worst ratio per method: mean (sd) over seeds."""
    def cell(values: list[float]) -> str:
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.4f} ({sd:.4f})"

    print(f"\nover seeds {summary['seeds']}: mean (sd)")
    print(f"{'method':12} {'mean ratio':>17} {'worst ratio':>17}")
    for n, m in summary["methods"].items():
        print(f"{n:12} {cell(m['mean_ratio_per_seed']):>17} {cell(m['worst_ratio_per_seed']):>17}")


if __name__ == "__main__":
    main()
