"""Logit distillation on the HF ``Trainer``: loss = CE + gamma * T^2 * D(p_T, p_S), chunked.

The student's final hidden states and lm_head weight go to the chunked core
(:mod:`domdistill.training.kd_losses`), so the full (tokens, vocab) student logits are never
built. The teacher signal is either *online* (a frozen teacher model run under ``no_grad`` on the
same batch: its hidden states and lm_head) or *offline* (top-k log-probs from
:mod:`domdistill.training.logit_cache`, carried in the batch as ``topk_ids``/``topk_logprobs``).
Without a teacher, or with ``gamma = 0``, the loss is the plain LM cross-entropy (CPT).

Sequences are plain LM text: ``labels`` equal ``input_ids`` with padding (and anything else not
to be learned) set to -100; the trainer shifts them. Checkpoints behave as in
:class:`~domdistill.training.sft.CheckpointTrainer` (atomic, with method state).

The student runs through its own (possibly DDP-wrapped) forward with ``logits_to_keep=1``, so
DDP's gradient synchronisation works under ``accelerate launch``; a hook on the body picks up
the final hidden states. Schemes that shard parameters (FSDP, DeepSpeed ZeRO-3) are refused:
the chunked loss reads the lm_head weight outside the forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from transformers.integrations import is_deepspeed_zero3_enabled

from domdistill.errors import ConfigError
from domdistill.models.compat import check_kd_compatible
from domdistill.training.data import IGNORE_INDEX
from domdistill.training.divergences import resolve_divergence
from domdistill.training.kd_losses import KDLossParts, chunked_kd_loss, sparse_kd_loss
from domdistill.training.sft import CheckpointTrainer

BatchFn = Callable[[dict[str, Any]], dict[str, Tensor]]


def unwrap(model: Any) -> Any:
    """The plain causal-LM module under DDP/DeepSpeed and peft wrappers (LoRA layers stay in it)."""
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def hidden_and_head(model: Any, input_ids: Tensor, attention_mask: Tensor | None
                    ) -> tuple[Tensor, Tensor]:
    """Final hidden states (B, L, H), after the last norm, and the lm_head weight (V, H).

    The call goes through ``model``'s own forward (a DDP wrapper included) with logits for the
    last position only; a forward hook on the body captures its ``last_hidden_state``."""
    m = unwrap(model)
    body = getattr(m, m.base_model_prefix)
    captured: list[Tensor] = []
    hook = body.register_forward_hook(lambda _mod, _args, out: captured.append(out[0]))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1)
    finally:
        hook.remove()
    return captured[-1], m.get_output_embeddings().weight


def lm_loss(hidden: Tensor, weight: Tensor, labels: Tensor) -> KDLossParts:
    """Chunked next-token CE alone (``labels`` already shifted): the teacher is the one-hot label
    and its weight is 0, so only the CE part trains."""
    ids = labels.clamp(min=0).unsqueeze(-1)
    return sparse_kd_loss(hidden, weight, ids, torch.zeros(ids.shape, dtype=hidden.dtype,
                                                           device=hidden.device),
                          labels, gamma=0.0, return_parts=True)


def kd_loss(model: Any, batch: dict[str, Tensor], teacher: Any | None = None, *,
            gamma: float = 0.2, temperature: float = 1.0, divergence: str = "fkl",
            divergence_param: float | None = None) -> KDLossParts:
    """CE + gamma * KD of ``model`` on one batch (``input_ids``, ``attention_mask``, ``labels``,
    and ``topk_ids``/``topk_logprobs`` for an offline teacher, rows aligned with the shifted
    labels). Only ``total`` carries gradients."""
    ids, mask = batch["input_ids"], batch.get("attention_mask")
    labels = batch["labels"][:, 1:]
    h, w = hidden_and_head(model, ids, mask)
    h = h[:, :-1]
    if gamma > 0 and "topk_ids" in batch:
        return sparse_kd_loss(h, w, batch["topk_ids"], batch["topk_logprobs"], labels,
                              temperature=temperature, gamma=gamma, return_parts=True)
    if gamma > 0 and teacher is not None:
        with torch.no_grad():
            th, tw = hidden_and_head(teacher, ids, mask)
        return chunked_kd_loss(h, w, th[:, :-1], tw, labels, gamma=gamma,
                               temperature=temperature,
                               divergence=divergence, beta=divergence_param,
                               lam=divergence_param,
                               return_parts=True)
    return lm_loss(h, w, labels)


def _targets(batch: dict[str, Any]) -> int:
    """Target tokens of a batch (labels are shifted in the loss)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def freeze(teacher: Any, device: torch.device | str | None = None) -> Any:
    """Eval mode, no gradients, on ``device``: how a teacher is used for logit KD."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher.to(device) if device is not None else teacher


class KDTrainer(CheckpointTrainer):
    """``CheckpointTrainer`` whose loss is CE + gamma * KD through the chunked core.

    ``teacher``: a frozen model (online signal) or None (offline top-k in the batch, or CPT).
    ``teacher_tokenizer``: checked against the student's (``processing_class``) with
    :func:`check_kd_compatible` before anything runs. ``batch_fn`` turns what the data loader
    yields into the token batch (e.g. slot numbers into sequences chosen by a domain sampler);
    by default the loader's batch is used as it is. ``tokens_seen`` counts the target tokens
    trained on, over all processes. Per-log-step means of CE and KD are added to
    the logs as ``ce`` and ``kd``.
    """

    loss_is_scaled_for_ga = True  # compute_loss divides by the target tokens of the whole step

    def __init__(self, *args: Any, teacher: Any | None = None, teacher_tokenizer: Any = None,
                 gamma: float = 0.2, temperature: float = 1.0, divergence: str = "fkl",
                 divergence_param: float | None = None, batch_fn: BatchFn | None = None,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.is_fsdp_enabled or is_deepspeed_zero3_enabled():
            raise ConfigError("logit KD reads the student's lm_head weight outside its forward, "
                              "which FSDP and DeepSpeed ZeRO-3 shard: use DDP or ZeRO-1/2 "
                              "(examples/accelerate/deepspeed_zero2.yaml)")
        if teacher is not None and teacher_tokenizer is not None:
            check_kd_compatible(teacher_tokenizer, self.processing_class, teacher.config,
                                unwrap(self.model).config)
        self.teacher = freeze(teacher, self.args.device) if teacher is not None else None
        try:  # fail before any compute
            resolve_divergence(divergence, divergence_param, divergence_param)
        except ConfigError as e:
            raise ConfigError(e.reason, field="method.divergence_param") from None
        self.gamma, self.temperature, self.divergence = gamma, temperature, divergence
        self.divergence_param = divergence_param
        self.batch_fn = batch_fn
        self._sums = {"ce": 0.0, "kd": 0.0, "tokens": 0}
        self.tokens_seen = 0  # target tokens trained on so far, all processes

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> Tensor:
        """Target tokens in this optimizer step's micro-batches, summed over processes. The
        micro-batches are turned into token batches here, once (``batch_fn``)."""
        if self.batch_fn is not None:
            batch_samples[:] = [self.batch_fn(b) for b in batch_samples]
        n = torch.tensor(sum(_targets(b) for b in batch_samples), device=device)
        n = self.accelerator.gather(n).sum() if self.args.world_size > 1 else n
        self.tokens_seen += int(n)
        return n

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        device = self.args.device
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in inputs.items()}
        parts = kd_loss(model, batch, self.teacher, gamma=self.gamma,
                        temperature=self.temperature, divergence=self.divergence,
                        divergence_param=self.divergence_param)
        tokens = _targets(batch)
        self._sums["ce"] += float(parts.ce) * tokens
        self._sums["kd"] += float(parts.kd) * tokens
        self._sums["tokens"] += tokens
        # mean over the step's target tokens on every process: DDP averages the gradients over
        # processes, hence the world size
        total = parts.total * tokens * self.args.world_size / max(1, int(num_items_in_batch))
        return (total, None) if return_outputs else total

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        n = self._sums["tokens"]
        if "loss" in logs and n:  # token means of the two parts since the last log (this process)
            logs["ce"] = round(self._sums["ce"] / n, 5)
            if self.gamma > 0:
                logs["kd"] = round(self._sums["kd"] / n, 5)
            self._sums = {"ce": 0.0, "kd": 0.0, "tokens": 0}
        super().log(logs, *args, **kwargs)
