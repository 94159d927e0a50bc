"""Methods are short recipes over the shared parts; ``run_config`` is the one entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from domdistill.config import RunConfig, save_config

BALDISTILL_FAMILY = ("zero_shot_cot", "random_ft", "random_ft_cot", "duplicate_ft_cot",
                     "balance_ft_cot", "active_ft_cot", "baldistill_n", "baldistill_a")
DDK_FAMILY = ("cpt", "kd", "ddk_es", "ddk_wo_fs", "ddk")


def run_config(cfg: RunConfig, out: str | Path | None = None, overwrite: bool | None = None,
               resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run the method ``cfg.method.name`` into a run folder; returns ``results.json``'s content."""
    from domdistill.methods.task import load_task
    from domdistill.runs import prepare_run_dir

    if cfg.training.cpu_threads:
        import torch

        torch.set_num_threads(cfg.training.cpu_threads)
    task = load_task(cfg.data)  # bad data fails here, before any folder is touched
    run_dir = prepare_run_dir(out or cfg.output.dir,
                              overwrite=cfg.output.overwrite if overwrite is None else overwrite,
                              resume=resume)
    save_config(cfg, run_dir.config)
    if cfg.method.name in BALDISTILL_FAMILY:
        from domdistill.methods.baldistill import BalDistillRun

        return BalDistillRun(cfg, run_dir, task, progress=progress).run()
    from domdistill.methods.ddk import run_ddk

    return run_ddk(cfg, run_dir, task, progress=progress)
