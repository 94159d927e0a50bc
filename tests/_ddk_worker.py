"""A small DDK run used by the DDK tests (in-process helpers and a crash/resume subprocess).

    python tests/_ddk_worker.py TEACHER_DIR OUT_DIR [--resume] [--method ddk] [--steps 25] [--batch 8]

Distils a nano student from ``TEACHER_DIR`` on a 400-example built-in pool, interval 5,
checkpoints every 4 steps, deterministic kernels; writes ``OUT_DIR/run`` (a run folder).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

DATA = {"path": "builtin", "builtin_size": 400, "max_test_per_domain": 4, "seed": 0}
TRAINING = {"learning_rate": 3e-3, "batch_size": 8, "max_seq_len": 64, "warmup_ratio": 0.1,
            "schedule": "cosine", "max_grad_norm": 1.0, "save_total_limit": 2,
            "deterministic": True, "seed": 3, "cpu_threads": 1}


def make_teacher(root: Path) -> Path:
    """A micro teacher trained briefly with CPT on the pool (cached under ``root``)."""
    from domdistill.methods.ddk_demo import ensure_teacher, teacher_config

    return ensure_teacher(teacher_config(DATA, TRAINING, "micro", 30, 5e-3), root)


def ddk_config(teacher: Path, out: Path, method: str = "ddk", steps: int = 25,
               tracking: list[str] | None = None, batch: int = 8, **method_opts: Any):
    from domdistill.config import config_from_dict

    return config_from_dict({
        "data": DATA, "teacher": {"kind": "hf", "model": str(teacher)},
        "student": {"model": "nano"},
        "method": {"name": method, "interval_steps": 5, "val_per_domain": 6, **method_opts},
        "training": {**TRAINING, "max_steps": steps, "save_steps": 4, "batch_size": batch},
        "evaluation": {"batch_size": 32},
        "output": {"dir": str(out), "tracking": tracking or []}})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("teacher")
    ap.add_argument("out")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--method", default="ddk")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--batch", type=int, default=8, help="per process")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from domdistill.methods import run_config

    cfg = ddk_config(Path(args.teacher), Path(args.out) / "run", args.method, args.steps,
                     batch=args.batch)
    run_config(cfg, resume=args.resume, progress=False)


if __name__ == "__main__":
    main()
