"""Training data whose domain mixture changes while training runs (DDK's intervals).

The Trainer's data loader yields *slot numbers* only (0, 1, 2, ... in order). Slot ``j`` belongs
to interval ``j // interval_size``; an interval's (domain, item) pairs are drawn from the domain
sampler's weights the first time one of its slots is turned into tokens, which happens inside
the training step (``DomainPlan.resolve`` as the trainer's ``batch_fn``). A weight change made
at an interval boundary (``IntervalCallback``) therefore applies to the next interval even though
the data loader reads ahead. ``state_dict`` (sampler state plus the current interval's draws)
goes into every checkpoint, so a resumed run sees the same sequences in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import TrainerCallback

from domdistill.data.mixture import DomainSampler
from domdistill.training.data import PadCollator

Encoded = dict[str, Any]  # {"key": str, "input_ids": list[int], "labels": list[int]}
TopK = Callable[[str, Sequence[int]], tuple[Tensor, Tensor]]


class SlotDataset(torch.utils.data.Dataset):
    """``n`` slots; item ``j`` is ``{"slot": j}``."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, j: int) -> dict[str, int]:
        return {"slot": j}


def collate_slots(batch: list[dict[str, int]]) -> dict[str, Tensor]:
    return {"slot": torch.tensor([b["slot"] for b in batch], dtype=torch.long)}


class DomainPlan:
    """Turns slot numbers into padded token batches drawn per interval from a ``DomainSampler``.

    ``topk`` (offline teacher): a function ``(key, input_ids) -> (ids, logprobs)`` giving
    (n - 1, k) rows per sequence; they are added to the batch as ``topk_ids``/``topk_logprobs``.
    """

    def __init__(self, sequences: Mapping[str, Sequence[Encoded]], sampler: DomainSampler,
                 interval_size: int, pad_id: int, topk: TopK | None = None):
        self.sequences = sequences
        self.sampler = sampler
        self.interval_size = interval_size
        self.collate = PadCollator(pad_id)
        self.topk = topk
        self.interval = -1  # index of the drawn interval
        self.slots: list[tuple[str, int]] = []

    def _draw(self, t: int) -> None:
        if t != self.interval + 1:
            raise RuntimeError(f"interval {t} requested, but interval {self.interval} is the last "
                               "one drawn (slots must be read in order)")
        self.slots = self.sampler.next_interval(self.interval_size)
        self.interval = t

    def items(self, slots: Sequence[int]) -> list[Encoded]:
        out = []
        for j in slots:
            t, pos = divmod(int(j), self.interval_size)
            if t != self.interval:
                self._draw(t)
            domain, index = self.slots[pos]
            out.append(self.sequences[domain][index])
        return out

    def resolve(self, inputs: Mapping[str, Any]) -> dict[str, Tensor]:
        """The token batch for ``inputs["slot"]`` (what the data loader yielded)."""
        items = self.items(inputs["slot"].tolist())
        batch = self.collate(items)
        if self.topk is not None:
            rows = [self.topk(it["key"], it["input_ids"]) for it in items]
            width, k = batch["input_ids"].shape[1] - 1, rows[0][0].shape[-1]
            ids = torch.zeros((len(items), width, k), dtype=torch.long)
            lps = torch.zeros((len(items), width, k), dtype=torch.float32)
            for r, (i, lp) in enumerate(rows):
                ids[r, :i.shape[0]] = i
                lps[r, :lp.shape[0]] = lp
            batch["topk_ids"], batch["topk_logprobs"] = ids, lps
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict(), "interval": self.interval,
                "slots": [list(s) for s in self.slots]}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.sampler = DomainSampler.from_state(state["sampler"])
        self.interval = int(state["interval"])
        self.slots = [(d, int(i)) for d, i in state["slots"]]


class IntervalCallback(TrainerCallback):
    """Calls ``on_boundary(step, model)`` after every ``every``-th optimizer step and after the
    last one (before that step's checkpoint is written)."""

    def __init__(self, every: int, max_steps: int, on_boundary: Callable[[int, Any], None]):
        self.every, self.max_steps, self.on_boundary = every, max_steps, on_boundary

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None,
                    **kwargs: Any) -> None:
        step = state.global_step
        if step % self.every == 0 or step == self.max_steps:
            self.on_boundary(step, model)
