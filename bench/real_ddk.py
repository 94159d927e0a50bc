"""DDK with a real pretrained teacher: SmolLM2-135M-Instruct distilled into a depth-pruned copy.

The teacher is the reference model (``smollm2-135m-instruct``: 30 layers, hidden 576, vocabulary
49,152, tied embeddings). The student is the same model with ``--layers`` of its 30 layers kept
(evenly spaced, first and last kept; embeddings, norms and lm_head copied: ``student.init:
depth_pruned``), fully fine-tuned. Domains: the 7 MATH subjects, problem + solution text; the pool
is MATH train resampled Zipf(1.1) with the largest subject cut to ``--largest`` sequences;
per-domain validation sequences come out of the pool, per-domain test sequences from MATH test.

Methods, every one at the same steps x batch x sequence length (equal training tokens, reported):
CPT (no teacher), KD (natural mixture), DDK and DDK without factor smoothing, over ``--seeds``
(a seed draws the training order and the domain draws; the pool and the pruned student are the
same for all). The teacher's top-k logits over the training pool are computed once into a cache
shared by every method and seed (``method.teacher_cache``), and so are its validation and test
perplexities; the cache's build time and size per token are reported.

Reported per domain: student perplexity and student/teacher ratio; per method the mean and the
worst ratio over domains, per seed and as mean (sd) over seeds; DDK's domain weights per interval
on the first seed (also drawn in that run's ``domain_weights.png``).

    python bench/real_ddk.py            # default: 3 seeds, under an hour on 2 cores
    python bench/real_ddk.py --quick    # the same code path: 2 seeds, fewer steps, shorter
                                        # texts, a smaller pool (under 20 minutes)

The last line printed is ``SUMMARY {json}``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddk_tiny import ddk_beats_kd, method_summaries, print_means, print_table  # noqa: E402

MODEL = "smollm2-135m-instruct"
METHODS = ("cpt", "kd", "ddk", "ddk_wo_fs")
SUMMARY_NAMES = {"cpt": "cpt", "kd": "kd", "ddk": "ddk", "ddk_wo_fs": "ddk_no_fs"}
PRESETS: dict[str, dict[str, Any]] = {
    "default": dict(seeds=[0, 1, 2], layers=6, largest=160, val=6, test=16, seq=96, steps=48,
                    batch=8, interval=8),
    "quick": dict(seeds=[0, 1], layers=6, largest=96, val=4, test=8, seq=64, steps=24,
                  batch=8, interval=6),
}


def make_config(args: argparse.Namespace, method: str, seed: int) -> Any:
    """One run's config: same data, student, steps and batch for every method."""
    from domdistill.config import config_from_dict

    math = str(Path(args.shared) / "math" / "MATH.tar.gz")
    return config_from_dict({
        "data": {"path": math, "format": "math", "split": "train", "test_path": math,
                 "test_format": "math", "task": "math", "zipf_alpha": 1.1,
                 "zipf_largest": args.largest, "max_test_per_domain": args.test, "seed": 0},
        "teacher": {"kind": "hf", "model": MODEL},
        "student": {"model": MODEL, "init": "depth_pruned", "num_layers": args.layers,
                    "dtype": "float32"},
        "method": {"name": method, "interval_steps": args.interval, "val_per_domain": args.val,
                   "teacher_logits": "offline", "topk": args.topk,
                   "teacher_cache": str(Path(args.out) / "teacher-cache")},
        "training": {"max_steps": args.steps, "batch_size": args.batch, "max_seq_len": args.seq,
                     "learning_rate": args.lr, "warmup_ratio": 0.1, "schedule": "cosine",
                     "max_grad_norm": 1.0, "save_steps": args.steps, "save_total_limit": 1,
                     "logging_steps": 4, "seed": seed},
        "evaluation": {"batch_size": 16},
        "output": {"dir": str(Path(args.out) / f"seed-{seed}" / method), "tracking": []},
    }, source="bench/real_ddk.py")


def run_method(args: argparse.Namespace, method: str, seed: int) -> dict[str, Any]:
    from domdistill.methods import run_config

    t0 = time.time()
    res = run_config(make_config(args, method, seed), overwrite=True, progress=False)
    res["bench_seconds"] = round(time.time() - t0, 1)
    m = res["metrics"]["macro"]
    print(f"[{time.strftime('%H:%M:%S')}] seed {seed} {method}: mean ratio {m['ppl_ratio']:.4f}, "
          f"worst {m['worst_ppl_ratio']:.4f}, {res['training']['tokens']} tokens "
          f"({res['bench_seconds']} s)", file=sys.stderr, flush=True)
    return res


def weights_table(res: dict[str, Any]) -> list[dict[str, Any]]:
    """DDK's domain weights and validation ratios per interval, printed and returned."""
    domains = sorted(res["dataset"]["domain_counts"], key=lambda d: -res["dataset"]["domain_counts"][d])
    print(f"\nDDK domain weights per interval (seed {res['bench_seed']}; ratio = student/teacher "
          "validation perplexity)")
    print(f"{'step':>5} " + " ".join(f"{d[:12]:>12}" for d in domains))
    rows = []
    for e in res["history"]:
        print(f"{e['step']:>5} " + " ".join(f"{e['weights'][d]:>12.3f}" for d in domains))
        print(f"{'ratio':>5} " + " ".join(f"{e['ratio'][d]:>12.2f}" for d in domains))
        rows.append({"step": e["step"], "weights": {d: round(e["weights"][d], 4) for d in domains},
                     "ratio": {d: round(e["ratio"][d], 3) for d in domains}})
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the quick preset (under 20 minutes)")
    ap.add_argument("--shared", type=Path, default=SHARED, help="the shared data folder")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_real_ddk",
                    help="run folders (seed-S/METHOD) and the shared teacher cache")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--topk", type=int, default=64, help="teacher log-probs kept per token")
    ap.add_argument("--lr", type=float, default=3e-4, help="learning rate (full fine-tuning)")
    for key in ("seeds", "layers", "largest", "val", "test", "seq", "steps", "batch", "interval"):
        ap.add_argument(f"--{key}", type=int, nargs="+" if key == "seeds" else None,
                        help=f"override the preset's {key}")
    args = ap.parse_args(argv)
    args.preset = "quick" if args.quick else "default"
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if "kd" in args.methods:  # the KD run first: it builds the shared teacher cache, timed
        args.methods = ["kd"] + [m for m in args.methods if m != "kd"]
    return args


def main(argv: list[str] | None = None) -> int:
    import torch

    from domdistill.errors import DomDistillError

    args = parse_args(argv)
    start = time.time()
    print(f"teacher {MODEL}; student: {args.layers} of its layers; preset {args.preset}; "
          f"seeds {args.seeds}; {args.steps} steps x {args.batch} sequences x {args.seq} tokens; "
          f"{torch.get_num_threads()} CPU threads", file=sys.stderr, flush=True)
    results: dict[tuple[int, str], dict[str, Any]] = {}
    try:
        for seed in args.seeds:
            for method in args.methods:
                results[(seed, method)] = {**run_method(args, method, seed), "bench_seed": seed}
    except DomDistillError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    wall = time.time() - start
    for seed in args.seeds:
        print(f"\nseed {seed}")
        print_table({m: results[(seed, m)] for m in args.methods})
    methods = method_summaries(results, args.seeds, args.methods)
    first = results[(args.seeds[0], args.methods[0])]
    summary: dict[str, Any] = {
        "preset": args.preset, "seeds": args.seeds, "teacher": MODEL,
        "teacher_params": first["teacher"]["params"], "student_params": first["student"]["params"],
        "student_layers": f"{args.layers} of 30", "steps": args.steps, "batch": args.batch,
        "max_seq_len": args.seq, "pool": first["dataset"]["domain_counts"],
        "methods": {SUMMARY_NAMES[m]: v for m, v in methods.items()},
        "wall_seconds": round(wall, 1)}
    logits = next((r["teacher"]["logits"] for (s, m), r in results.items()
                   if s == args.seeds[0] and m == "kd"), None)
    if logits:
        summary["teacher_logits"] = {
            "tokens": logits["tokens"], "mib": round(logits["bytes"] / 2 ** 20, 2),
            "bytes_per_token": logits["bytes_per_token"], "k": logits["k"],
            "build_seconds": logits["seconds"],
            "tokens_per_second": round(logits["tokens"] / max(logits["seconds"], 1e-9), 1)}
    print_means({"seeds": args.seeds, "methods": summary["methods"]})
    if "ddk" in methods:
        ddk_first = results[(args.seeds[0], "ddk")]
        summary["ddk_weights_seed0"] = weights_table(ddk_first)
        figure = Path(args.out) / f"seed-{args.seeds[0]}" / "ddk" / "domain_weights.png"
        shutil.copyfile(figure, Path(args.out) / "ddk_domain_weights.png")
        print(f"figure: {figure} (copied to {Path(args.out) / 'ddk_domain_weights.png'})")
        if "kd" in methods:
            summary["ddk_beats_kd"] = ddk_beats_kd(methods["ddk"], methods["kd"])
    if "teacher_logits" in summary:
        t = summary["teacher_logits"]
        print(f"\nteacher top-{t['k']} logits: {t['tokens']} tokens, {t['mib']} MiB "
              f"({t['bytes_per_token']} bytes/token), built in {t['build_seconds']} s "
              f"({t['tokens_per_second']} tokens/s), shared by {len(results) - 1} later runs")
    print(f"wall: {wall / 60:.1f} min")
    print("SUMMARY " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
