"""Logit distillation on the HF ``Trainer``: loss = CE + gamma * T^2 * D(p_T, p_S), chunked.

The student's final hidden states and lm_head weight go to the chunked core
(:mod:`domdistill.training.kd_losses`), so the full (tokens, vocab) student logits are never
built. The teacher signal is either *online* (a frozen teacher model run under ``no_grad`` on the
same batch: its hidden states and lm_head) or *offline* (top-k log-probs from
:mod:`domdistill.training.logit_cache`, carried in the batch as ``topk_ids``/``topk_logprobs``).
Without a teacher, or with ``gamma = 0``, the loss is the plain LM cross-entropy (CPT).

Sequences are plain LM text: ``labels`` equal ``input_ids`` with padding (and anything else not
to be learned) set to -100; the trainer shifts them. Checkpoints behave as in
:class:`~domdistill.training.sft.CheckpointTrainer` (atomic, with method state). One process
only: the student's body is called directly, outside any DDP wrapper.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from domdistill.models.compat import check_kd_compatible
from domdistill.training.kd_losses import KDLossParts, chunked_kd_loss, sparse_kd_loss
from domdistill.training.sft import CheckpointTrainer

# MethodConfig.divergence names -> names of the chunked core's registry
DIVERGENCE_NAMES = {"skew_fkl": "sfkl", "skew_rkl": "srkl", "tvd": "tv"}

BatchFn = Callable[[dict[str, Any]], dict[str, Tensor]]


def unwrap(model: Any) -> Any:
    """The plain causal-LM module under a peft wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def hidden_and_head(model: Any, input_ids: Tensor, attention_mask: Tensor | None
                    ) -> tuple[Tensor, Tensor]:
    """Final hidden states (B, L, H), after the last norm, and the lm_head weight (V, H)."""
    m = unwrap(model)
    body = getattr(m, m.base_model_prefix)
    out = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state, m.get_output_embeddings().weight


def lm_loss(hidden: Tensor, weight: Tensor, labels: Tensor) -> KDLossParts:
    """Chunked next-token CE alone (``labels`` already shifted): the teacher is the one-hot label
    and its weight is 0, so only the CE part trains."""
    ids = labels.clamp(min=0).unsqueeze(-1)
    return sparse_kd_loss(hidden, weight, ids, torch.zeros(ids.shape, dtype=hidden.dtype,
                                                           device=hidden.device),
                          labels, gamma=0.0, return_parts=True)


def kd_loss(model: Any, batch: dict[str, Tensor], teacher: Any | None = None, *,
            gamma: float = 0.2, temperature: float = 1.0, divergence: str = "fkl"
            ) -> KDLossParts:
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
                               divergence=DIVERGENCE_NAMES.get(divergence, divergence),
                               return_parts=True)
    return lm_loss(h, w, labels)


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
    by default the loader's batch is used as it is. Per-log-step means of CE and KD are added to
    the logs as ``ce`` and ``kd``.
    """

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean: the Trainer rescales

    def __init__(self, *args: Any, teacher: Any | None = None, teacher_tokenizer: Any = None,
                 gamma: float = 0.2, temperature: float = 1.0, divergence: str = "fkl",
                 batch_fn: BatchFn | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if teacher is not None and teacher_tokenizer is not None:
            check_kd_compatible(teacher_tokenizer, self.processing_class, teacher.config,
                                unwrap(self.model).config)
        self.teacher = freeze(teacher, self.args.device) if teacher is not None else None
        self.gamma, self.temperature, self.divergence = gamma, temperature, divergence
        self.batch_fn = batch_fn
        self._sums = {"ce": 0.0, "kd": 0.0, "n": 0}

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        batch = self.batch_fn(inputs) if self.batch_fn is not None else inputs
        device = self.args.device
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        parts = kd_loss(model, batch, self.teacher, gamma=self.gamma,
                        temperature=self.temperature, divergence=self.divergence)
        self._sums["ce"] += float(parts.ce)
        self._sums["kd"] += float(parts.kd)
        self._sums["n"] += 1
        return (parts.total, None) if return_outputs else parts.total

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        n = self._sums["n"]
        if "loss" in logs and n:
            logs["ce"] = round(self._sums["ce"] / n, 5)
            if self.gamma > 0:
                logs["kd"] = round(self._sums["kd"] / n, 5)
            self._sums = {"ce": 0.0, "kd": 0.0, "n": 0}
        super().log(logs, *args, **kwargs)
