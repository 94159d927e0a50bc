"""DDK vs its baselines on long-tailed MATH with tiny Llamas (CPU).

The 7 MATH subjects are the domains; the training pool is MATH train resampled Zipf(1.1)
(algebra 1744 ... precalculus 205). A tiny teacher is trained by CPT on the whole pool (cached
under OUT/teacher), then a smaller student with the teacher's tokenizer is trained from scratch
by CPT, KD, DDK-ES, DDK w/o smoothing and DDK, all with the same steps and batch (equal
sequences; the tokens each saw are reported). Reported per domain: student perplexity on MATH
test problems + solutions and its ratio to the teacher's; per method the mean and the worst
ratio over domains.

    python bench/ddk_tiny.py                 # default preset (~15-25 min on 2 cores)
    python bench/ddk_tiny.py --preset quick  # a couple of minutes

Last line: ``SUMMARY {json}`` with ``methods``: name -> ``mean_ratio``, ``worst_ratio``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MATH = REPO.parent / "shared" / "data" / "math" / "MATH.tar.gz"
METHODS = ("cpt", "kd", "ddk_es", "ddk_wo_fs", "ddk")
PRESETS = {
    "default": dict(teacher="tiny", teacher_steps=500, student="micro", steps=400, interval=20,
                    val=50, test=100, seq=128, warm=0),
    "quick": dict(teacher="micro", teacher_steps=80, student="nano", steps=60, interval=10,
                  val=20, test=30, seq=96, warm=0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_ddk_tiny",
                    help="folder for the teacher cache and one run folder per method")
    ap.add_argument("--data", type=Path, default=MATH, help="MATH tree or .tar.gz")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--steps", type=int, help="student optimizer steps (override the preset)")
    ap.add_argument("--warm-start", type=int, help="first pretrain the student by CPT for this "
                    "many steps (natural mixture, cached) and start every method from it, as "
                    "DDK starts from a pretrained student (default: from scratch)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    p = dict(PRESETS[args.preset])
    if args.steps:
        p["steps"] = args.steps
    if args.warm_start is not None:
        p["warm"] = args.warm_start

    import torch

    torch.set_num_threads(1)
    from domdistill.config import config_from_dict
    from domdistill.methods import run_config
    from domdistill.methods.ddk_demo import ensure_teacher, student_config, teacher_config

    data = {"path": str(args.data), "format": "math", "split": "train",
            "test_path": str(args.data), "test_format": "math", "task": "math",
            "zipf_alpha": 1.1, "max_test_per_domain": p["test"], "seed": args.seed}
    training = {"learning_rate": 3e-3, "batch_size": 16, "max_seq_len": p["seq"],
                "warmup_ratio": 0.05, "schedule": "cosine", "max_grad_norm": 1.0,
                "weight_decay": 0.1, "cpu_threads": 1, "save_total_limit": 1,
                "logging_steps": 10, "seed": args.seed}
    start = time.time()
    teacher = ensure_teacher(teacher_config(data, training, p["teacher"], p["teacher_steps"], 3e-3),
                             args.out / "teacher")
    print(f"teacher ready: {teacher} ({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
    student = p["student"]
    if p["warm"]:  # the same pretrained student for every method (its tokenizer is the teacher's)
        student = str(ensure_teacher(teacher_config(data, training, p["student"], p["warm"], 3e-3),
                                     args.out / "student_base"))
    results, seconds = {}, {}
    for name in args.methods:
        t0 = time.time()
        raw = student_config(name, data, training, teacher, student, p["steps"],
                             p["interval"], p["val"], args.out)
        results[name] = run_config(config_from_dict(raw, source="bench/ddk_tiny.py"),
                                   overwrite=True, progress=False)
        seconds[name] = round(time.time() - t0, 1)
        m = results[name]["metrics"]["macro"]
        print(f"{name}: mean ratio {m['ppl_ratio']:.4f}, worst {m['worst_ppl_ratio']:.4f} "
              f"({seconds[name]} s)", file=sys.stderr, flush=True)
    print_table(results)
    summary = {
        "preset": args.preset, "teacher": p["teacher"], "student": p["student"],
        "steps": p["steps"], "interval_steps": p["interval"], "warm_start_steps": p["warm"],
        "sequences_per_method": p["steps"] * training["batch_size"],
        "methods": {n: {"mean_ratio": round(r["metrics"]["macro"]["ppl_ratio"], 4),
                        "worst_ratio": round(r["metrics"]["macro"]["worst_ppl_ratio"], 4),
                        "mean_ppl": round(r["metrics"]["macro"]["perplexity"], 3),
                        "tokens": r["training"]["tokens"], "seconds": seconds[n]}
                    for n, r in results.items()},
        "wall_seconds": round(time.time() - start, 1)}
    if "kd" in results and "ddk" in results:
        kd, ddk = summary["methods"]["kd"], summary["methods"]["ddk"]
        summary["ddk_beats_kd"] = {"mean": ddk["mean_ratio"] < kd["mean_ratio"],
                                   "worst": ddk["worst_ratio"] < kd["worst_ratio"]}
    print("SUMMARY " + json.dumps(summary))


def print_table(results: dict) -> None:
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


if __name__ == "__main__":
    main()
