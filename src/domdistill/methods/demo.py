"""The built-in demo: a CPU-sized comparison on the embedded long-tailed task."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from domdistill.config import RunConfig, config_from_dict

DEMO_BALDISTILL: dict[str, Any] = {
    "data": {"path": "builtin", "builtin_size": 2000, "max_test_per_domain": 30, "seed": 0},
    "teacher": {"kind": "program", "model": "program"},
    "student": {"model": "micro"},
    "method": {"name": "baldistill_a", "budget": 840, "stages": 3, "score_max_new_tokens": 40,
               "score_candidates": 48},
    "training": {"epochs": 15, "learning_rate": 5e-3, "batch_size": 32, "max_seq_len": 96,
                 "warmup_ratio": 0.05, "schedule": "cosine", "max_grad_norm": 1.0,
                 "cpu_threads": 1, "save_total_limit": 1},
    "evaluation": {"max_new_tokens": 40, "batch_size": 64, "bootstrap": 200},
}


def demo_config(method: str, out: Path) -> RunConfig:
    raw = {**DEMO_BALDISTILL, "output": {"dir": str(out / method)}}
    raw["method"] = {**raw["method"], "name": method}
    return config_from_dict(raw, source="built-in demo")


def run_demo(out: str | Path, method: str = "baldistill", overwrite: bool = False,
             log: Callable[[str], None] = lambda message: None) -> dict[str, dict]:
    """Run the demo's methods into ``out/<method>/`` and write ``out/report.md``; ``log`` is told
    what is being run as it starts."""
    from domdistill.methods import run_config

    out = Path(out)
    if method == "ddk":
        from domdistill.methods.ddk import run_ddk_demo

        runs = run_ddk_demo(out, overwrite=overwrite)
        write_demo_report(out, runs)
        return runs
    if method != "baldistill":
        raise ValueError(f"unknown demo {method!r}: choose baldistill or ddk")
    runs = {}
    for name in ("baldistill_a", "random_ft_cot"):
        cfg = demo_config(name, out)
        stages = f"{cfg.method.stages} stages" if name == "baldistill_a" else "one round"
        log(f"{name}: {cfg.method.budget} calls to the program teacher in {stages}, "
            f"{cfg.student.model} student, built-in task ({cfg.data.builtin_size} examples) "
            f"-> {out / name}")
        start = time.time()
        runs[name] = run_config(cfg, overwrite=overwrite)
        log(f"{name}: done in {time.time() - start:.0f} s")
    write_demo_report(out, runs)
    log(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return runs


def write_demo_report(out: Path, runs: dict[str, dict]) -> None:
    """The comparison report (``out/report.md``, ``report.html``, plots) over the demo's run folders."""
    from domdistill.evaluation.report import write_report

    write_report([out / name for name in runs], out)
