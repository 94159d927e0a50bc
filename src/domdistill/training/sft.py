"""Supervised fine-tuning on (prompt, completion) pairs over the HF ``Trainer``.

The loss is on the completion only. Gradient accumulation, clipping, warmup and the
schedule come from ``TrainingConfig``; several GPUs or nodes come from ``accelerate launch`` /
``torchrun`` (DDP, FSDP, DeepSpeed configs), not from code here. Checkpoints are complete or
absent (see ``checkpoints.py``) and carry the calling method's state.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback
from transformers.utils import logging as hf_logging

from domdistill.config import TrainingConfig
from domdistill.errors import RunFolderError
from domdistill.training import checkpoints as ck
from domdistill.training.data import PadCollator, PairDataset, pad_id

log = logging.getLogger(__name__)

MethodState = dict[str, Any] | Callable[[], dict[str, Any]]
# Fault injection for crash tests: pause (forever) in the middle of writing checkpoint N.
PAUSE_ENV = "DOMDISTILL_PAUSE_IN_SAVE"
_SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}


@dataclass
class TrainResult:
    """What a fine-tuning call did. ``model`` is the trained model (a peft model for LoRA)."""

    global_step: int
    losses: list[tuple[int, float]]
    final_loss: float | None
    wall_seconds: float
    resumed_from: str | None = None
    model: Any = field(default=None, repr=False)


def show_progress(progress: bool) -> bool:
    """Progress bars only when asked for and stderr is a terminal."""
    return progress and sys.stderr.isatty()


def training_arguments(cfg: TrainingConfig, output_dir: str | Path, progress: bool = True,
                       **overrides: Any) -> TrainingArguments:
    """``TrainingArguments`` from our config. ``batch_size`` is per device (global = x processes x accum)."""
    use_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio of the total steps
        lr_scheduler_type=_SCHEDULES[cfg.schedule],
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps else "epoch",
        save_steps=cfg.save_steps or 500,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        full_determinism=cfg.deterministic,
        optim="adamw_torch",
        bf16=use_bf16,
        report_to="none",
        disable_tqdm=not show_progress(progress),
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        ddp_find_unused_parameters=False,
    )
    if not torch.cuda.is_available():
        kwargs["use_cpu"] = True
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            kwargs["ddp_backend"] = "gloo"  # several CPU processes (torchrun / accelerate launch)
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


class CheckpointTrainer(Trainer):
    """A ``Trainer`` whose checkpoints are written atomically and carry method state.

    Subclass it (e.g. to change ``compute_loss`` for logit distillation) to keep the same
    checkpoint behaviour.
    """

    def __init__(self, *args: Any, method_state: MethodState | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.method_state = method_state
        self._staging_root: str | None = None

    def _get_output_dir(self, trial: Any) -> str:
        return self._staging_root or super()._get_output_dir(trial)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        run_dir = Path(super()._get_output_dir(trial))
        name = f"checkpoint-{self.state.global_step}"
        staging = run_dir / ck.STAGING
        if self.args.should_save:
            shutil.rmtree(staging / name, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._staging_root = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            staged = staging / name
            if self.method_state is not None:
                state = self.method_state() if callable(self.method_state) else self.method_state
                ck.save_method_state(staged, state)
            ck.write_manifest(staged, self.state.global_step)
            ck.publish(staged, run_dir / name)
            ck.prune(run_dir, self.args.save_total_limit or 0)
            if staging.is_dir() and not any(staging.iterdir()):
                staging.rmdir()
        self.accelerator.wait_for_everyone()

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """No "missing keys" warning for weights tied to a loaded one (a tied lm_head is not
        saved apart from the embeddings it shares)."""
        missing = set(load_result.missing_keys)
        if missing:
            params = dict(self.model.named_parameters(remove_duplicate=False))
            loaded = {p.data_ptr() for name, p in params.items() if name not in missing}
            if all(name in params and params[name].data_ptr() in loaded for name in missing):
                load_result = load_result._replace(missing_keys=[])
        super()._issue_warnings_after_load(load_result)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if os.environ.get(PAUSE_ENV) == str(self.state.global_step):
            print(f"PAUSED_IN_SAVE {self.state.global_step}", file=sys.stderr, flush=True)
            while True:  # wait to be killed half-way through the write
                time.sleep(1)
        super()._save_optimizer_and_scheduler(output_dir)


class _StepPrinter(TrainerCallback):
    """Prints ``STEP n`` after each optimizer step when DOMDISTILL_PRINT_STEPS is set (crash tests)."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        print(f"STEP {state.global_step}", file=sys.stderr, flush=True)


class LogToTracker(TrainerCallback):
    """Sends the Trainer's logs (loss, learning rate, gradient norm, ...) to a
    :class:`~domdistill.evaluation.tracking.Tracker` as they are made, under ``prefix/``."""

    def __init__(self, tracker: Any, prefix: str = "train"):
        self.tracker, self.prefix = tracker, prefix

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        if logs:
            self.tracker.log({self.prefix: logs}, step=state.global_step)


def train_sft(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], cfg: TrainingConfig,
              output_dir: str | Path, resume: bool = False, method_state: MethodState | None = None,
              progress: bool = True, callbacks: list[TrainerCallback] | None = None) -> TrainResult:
    """Fine-tune ``model`` on (prompt, completion) pairs; checkpoints go to ``output_dir``.

    ``resume=True`` continues from the latest complete checkpoint there (weights or adapter,
    optimizer, scheduler, RNG states and data position); with none it starts from scratch.
    ``method_state`` (a dict, or a function returning one) is saved inside every checkpoint;
    read it back with ``checkpoints.resume_point(output_dir)``.
    """
    if not pairs:
        raise ValueError("train_sft needs at least one (prompt, completion) pair")
    output_dir = Path(output_dir)
    start = time.perf_counter()
    args = training_arguments(cfg, output_dir, progress)
    existing = ck.latest_checkpoint(output_dir)
    if existing is not None and not resume:
        raise RunFolderError(f"{output_dir}: holds checkpoints from an earlier run; resume it or "
                             "start in an empty folder")
    if args.should_save:
        ck.clear_staging(output_dir)
    cbs = list(callbacks or [])
    if os.environ.get("DOMDISTILL_PRINT_STEPS"):
        cbs.append(_StepPrinter())
    trainer = CheckpointTrainer(
        model=model, args=args, train_dataset=PairDataset(tokenizer, pairs, cfg.max_seq_len),
        data_collator=PadCollator(pad_id(tokenizer)), processing_class=tokenizer,
        callbacks=cbs, method_state=method_state)
    if not show_progress(progress):
        trainer.remove_callback(PrinterCallback)  # no per-step dicts on stdout
    resume_from = str(existing) if (resume and existing is not None) else None
    if resume_from:
        log.info("resuming from %s", resume_from)
    bars = hf_logging.is_progress_bar_enabled()
    if not show_progress(progress):
        hf_logging.disable_progress_bar()
    try:
        with ck.loading_checkpoint(resume_from, trainer):
            trainer.train(resume_from_checkpoint=resume_from)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    losses = [(int(e["step"]), float(e["loss"])) for e in trainer.state.log_history if "loss" in e]
    return TrainResult(global_step=trainer.state.global_step, losses=losses,
                       final_loss=losses[-1][1] if losses else None,
                       wall_seconds=time.perf_counter() - start, resumed_from=resume_from,
                       model=trainer.model)
