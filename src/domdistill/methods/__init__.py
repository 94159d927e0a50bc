"""Methods are short recipes over the shared parts; ``run_config`` is the one entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from domdistill.config import RunConfig, save_config
from domdistill.progress import say

BALDISTILL_FAMILY = ("zero_shot_cot", "random_ft", "random_ft_cot", "duplicate_ft_cot",
                     "balance_ft_cot", "active_ft_cot", "baldistill_n", "baldistill_a")
DDK_FAMILY = ("cpt", "kd", "ddk_es", "ddk_wo_fs", "ddk")


def run_config(cfg: RunConfig, out: str | Path | None = None, overwrite: bool | None = None,
               resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run the method ``cfg.method.name`` into a run folder; returns ``results.json``'s content."""
    from domdistill import distributed as dist
    from domdistill.methods.task import load_task, task_for_run

    dist.die_with_launcher()
    if cfg.training.cpu_threads:
        import torch

        torch.set_num_threads(cfg.training.cpu_threads)
    sequence_level = cfg.method.name in BALDISTILL_FAMILY
    # bad data fails here, before any folder is touched
    task = task_for_run(cfg) if sequence_level else load_task(cfg.data)
    if dist.launched():  # a GGUF model is converted once, by the main process, before others read it
        dist.on_main(lambda: prepare_models(cfg))
    check_models(cfg)
    uses_ledger = False
    if sequence_level:
        from domdistill.methods.baldistill import RECIPES
        from domdistill.methods.students import check_student_format
        from domdistill.teachers import check_teacher

        fit = check_student_format(cfg, task)
        if fit["cut"]:
            say(f"{fit['cut']} of {fit['inputs']} inputs are longer than {fit['max_prompt_tokens']} "
                "prompt tokens: their end will be cut (instruction and labels are kept)")
        recipe = RECIPES[cfg.method.name]
        uses_ledger = recipe.rationale and recipe.train
        if uses_ledger:
            check_teacher(cfg.teacher)
    run_dir = dist.on_main(lambda: take_run_dir(cfg, task, out, overwrite, resume, uses_ledger))
    try:
        if cfg.method.name in BALDISTILL_FAMILY:
            from domdistill.methods.baldistill import BalDistillRun

            return BalDistillRun(cfg, run_dir, task, progress=progress).run()
        from domdistill.methods.ddk import run_ddk

        return run_ddk(cfg, run_dir, task, progress=progress)
    finally:
        run_dir.release()


def prepare_models(cfg: RunConfig) -> None:
    """Convert the student's and a local teacher's GGUF files (or reference models) into their
    cached HF folders now, if they are not there yet."""
    from domdistill.models.gguf import resolve_model_name

    check_model_path(cfg.student.model, "student.model")
    resolve_model_name(cfg.student.model)
    if cfg.teacher.kind == "hf":
        check_model_path(cfg.teacher.model, "teacher.model")
        resolve_model_name(cfg.teacher.model)


def take_run_dir(cfg: RunConfig, task: Any, out: str | Path | None, overwrite: bool | None,
                 resume: bool, uses_ledger: bool) -> Any:
    """The run folder, locked for this process: a new one (its ledger and ``run.json`` created),
    or a checked resume. ``config.yaml`` is written only once every check has passed."""
    from domdistill.resume import check_resume, record_resume, start_manifest
    from domdistill.runs import open_run_dir
    from domdistill.teachers.ledger import Ledger

    changes: dict[str, Any] = {}

    def check(run_dir: Any) -> None:
        changes.update(check_resume(run_dir, cfg, task, uses_ledger))
        if cfg.method.name in BALDISTILL_FAMILY:  # the saved state must be one this method reads
            from domdistill.methods.baldistill import State

            State.load(run_dir.state)

    run_dir = open_run_dir(out or cfg.output.dir, resume=resume, check=check,
                           overwrite=cfg.output.overwrite if overwrite is None else overwrite)
    try:
        ledger_id = None
        if uses_ledger:
            with Ledger(run_dir.ledger) as ledger:
                ledger_id = ledger.ledger_id
        save_config(cfg, run_dir.config)
        if resume:
            record_resume(run_dir, cfg, task, changes, ledger_id)
        else:
            start_manifest(run_dir, cfg, task, ledger_id)
    except BaseException:
        run_dir.release()
        raise
    return run_dir


def check_model_path(name: str, field: str) -> None:
    """A model named by a local path (folder or GGUF file) must be there, a reference model
    installed, and GGUF files readable (hub ids are checked when loaded)."""
    import importlib.util

    from domdistill.errors import ConfigError
    from domdistill.models.gguf import REFERENCE_MODELS, is_gguf, reference_gguf
    from domdistill.models.loading import is_tiny_preset, names_a_path

    if name in REFERENCE_MODELS:
        try:
            reference_gguf(name)
        except ConfigError as e:
            raise ConfigError(e.reason, field=field) from None
    elif "/" not in name and not is_tiny_preset(name) and not Path(name).expanduser().exists():
        from difflib import get_close_matches

        from domdistill.models.tiny import TINY_PRESETS

        known = [*TINY_PRESETS, *REFERENCE_MODELS]
        close = get_close_matches(name, known, n=1, cutoff=0.8)
        if close:  # a typo of a built-in name, not worth a minute of hub retries
            raise ConfigError(f"unknown model {name!r}: did you mean {close[0]!r}? (tiny presets: "
                              f"{', '.join(TINY_PRESETS)}; reference models: "
                              f"{', '.join(REFERENCE_MODELS)}; or a hub id or folder)", field=field)
    elif not is_tiny_preset(name) and names_a_path(name) and not Path(name).expanduser().exists():
        kind = "GGUF file" if is_gguf(name) else "model folder"
        raise ConfigError(f"{kind} {str(Path(name).expanduser().resolve())!r} does not exist",
                          field=field)
    if (is_gguf(name) or name in REFERENCE_MODELS) and importlib.util.find_spec("gguf") is None:
        raise ConfigError("reading a GGUF model needs the gguf package: pip install gguf",
                          field=field)


def check_num_layers(model: str, keep: int) -> None:
    """``student.num_layers`` fits the model it shrinks (read from its config, no weights)."""
    from domdistill.models.loading import is_tiny_preset
    from domdistill.models.shrink import kept_layers, num_layers

    if is_tiny_preset(model):
        from domdistill.models.tiny import TINY_PRESETS

        total = TINY_PRESETS[model]["num_hidden_layers"]
    else:
        from transformers import AutoConfig

        from domdistill.models.gguf import resolve_model_name

        try:
            total = num_layers(AutoConfig.from_pretrained(resolve_model_name(model)))
        except (OSError, ValueError):
            return  # unreadable here: loading the model reports it
    kept_layers(total, keep)


def check_models(cfg: RunConfig) -> None:
    """Before a run folder exists: the student (and a local HF teacher) can be found; a
    logit-KD teacher and student have compatible tokenizers and vocabularies."""
    check_model_path(cfg.student.model, "student.model")
    if cfg.student.load_in_4bit:
        from domdistill.models.loading import check_qlora

        check_qlora()
    if cfg.teacher.kind == "hf":
        check_model_path(cfg.teacher.model, "teacher.model")
    if cfg.student.num_layers is not None:
        check_num_layers(cfg.student.model, cfg.student.num_layers)
    if cfg.method.name not in DDK_FAMILY or cfg.method.name == "cpt" or cfg.method.gamma <= 0 \
            or cfg.teacher.kind != "hf":
        return
    from domdistill.errors import ConfigError
    from domdistill.models.compat import check_kd_compatible
    from domdistill.models.loading import is_tiny_preset

    def describe(name: str, field: str):
        from transformers import AutoConfig, AutoTokenizer

        from domdistill.models.gguf import resolve_model_name

        name = resolve_model_name(name)  # a reference name or .gguf file: its converted folder
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
