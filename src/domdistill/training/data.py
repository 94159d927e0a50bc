"""(prompt, completion) pairs as token sequences with the loss on the completion only."""

from __future__ import annotations

from typing import Any

import torch

from domdistill.data.templates import prompt_ids

__all__ = ["IGNORE_INDEX", "PadCollator", "PairDataset", "encode_pair", "pad_id", "prompt_ids"]

IGNORE_INDEX = -100


def encode_pair(tokenizer: Any, prompt: str, completion: str, max_seq_len: int) -> dict[str, list[int]]:
    """Token ids and labels for ``prompt + completion + eos``; prompt labels are -100.

    Prompt and completion are tokenized separately (so the prompt tokenizes exactly as it does at
    generation time, see ``prompt_ids``, chat template included). Prompts are cut to fit before
    they get here (``StudentTemplate.fit``); a sequence still too long keeps at least half of
    ``max_seq_len`` for the completion: the prompt loses tokens from its start, the completion
    from its end.
    """
    p = prompt_ids(tokenizer, prompt)
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        c = c + [tokenizer.eos_token_id]
    if len(p) + len(c) > max_seq_len:
        c_keep = min(len(c), max(max_seq_len - len(p), max_seq_len // 2))
        c = c[:c_keep]
        p = p[len(p) - (max_seq_len - c_keep):] if max_seq_len > c_keep else []
    return {"input_ids": p + c, "labels": [IGNORE_INDEX] * len(p) + c}


class PairDataset(torch.utils.data.Dataset):
    """Encoded (prompt, completion) pairs, encoded once up front."""

    def __init__(self, tokenizer: Any, pairs: list[tuple[str, str]], max_seq_len: int):
        self.items = [encode_pair(tokenizer, p, c, max_seq_len) for p, c in pairs]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.items[i]


def pad_id(tokenizer: Any) -> int:
    """The padding id: the tokenizer's pad token, else eos, else 0."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


class PadCollator:
    """Right-pads a batch: input ids with the pad id, labels with -100, plus the attention mask."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
