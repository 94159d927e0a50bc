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
    from domdistill import distributed as dist
    from domdistill.methods.task import load_task
    from domdistill.runs import RunDir, prepare_run_dir

    if cfg.training.cpu_threads:
        import torch

        torch.set_num_threads(cfg.training.cpu_threads)
    task = load_task(cfg.data)  # bad data fails here, before any folder is touched
    check_models(cfg)
    if cfg.method.name in BALDISTILL_FAMILY:
        from domdistill.methods.baldistill import RECIPES
        from domdistill.teachers import check_teacher

        if RECIPES[cfg.method.name].rationale and RECIPES[cfg.method.name].train:
            check_teacher(cfg.teacher)
    if dist.launched() and cfg.method.name not in DDK_FAMILY:
        from domdistill.errors import ConfigError

        raise ConfigError(f"{cfg.method.name} runs in one process (teacher calls, selection and "
                          "fine-tuning); launch it without accelerate launch / torchrun",
                          field="method.name")

    def prepare() -> RunDir:
        run_dir = prepare_run_dir(out or cfg.output.dir, resume=resume,
                                  overwrite=cfg.output.overwrite if overwrite is None else overwrite)
        save_config(cfg, run_dir.config)
        return run_dir

    run_dir = dist.on_main(prepare)  # several processes: the main one prepares the folder
    if cfg.method.name in BALDISTILL_FAMILY:
        from domdistill.methods.baldistill import BalDistillRun

        return BalDistillRun(cfg, run_dir, task, progress=progress).run()
    from domdistill.methods.ddk import run_ddk

    return run_ddk(cfg, run_dir, task, progress=progress)


def check_models(cfg: RunConfig) -> None:
    """Before a run folder exists: a logit-KD teacher (and a student that is no tiny preset) can
    be found, and their tokenizers and vocabularies are compatible."""
    if cfg.method.name not in DDK_FAMILY or cfg.method.name == "cpt" or cfg.method.gamma <= 0 \
            or cfg.teacher.kind != "hf":
        return
    from domdistill.errors import ConfigError
    from domdistill.models.compat import check_kd_compatible
    from domdistill.models.loading import is_tiny_preset

    def describe(name: str, field: str):
        from transformers import AutoConfig, AutoTokenizer

        looks_local = name.startswith(("/", ".", "~")) or name.count("/") > 1
        if looks_local and not Path(name).expanduser().exists():
            raise ConfigError(f"model folder {name!r} does not exist", field=field)
        try:
            return AutoTokenizer.from_pretrained(name), AutoConfig.from_pretrained(name)
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot load {name!r} ({str(err).splitlines()[0]})",
                              field=field) from None

    t_tok, t_cfg = describe(cfg.teacher.model, "teacher.model")
    if is_tiny_preset(cfg.student.model):
        return  # a tiny preset is built with the teacher's tokenizer
    s_tok, s_cfg = describe(cfg.student.model, "student.model")
    try:
        check_kd_compatible(t_tok, s_tok, t_cfg, s_cfg)
    except ConfigError as err:
        raise ConfigError(f"{err.reason} (teacher.model {cfg.teacher.model!r}, student.model "
                          f"{cfg.student.model!r})", field=err.field) from None
