"""Batched greedy generation with a student: left padding, longest prompts first, input order kept."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import GenerationConfig

from domdistill import distributed as dist
from domdistill.training.data import pad_id, prompt_ids
from domdistill.training.sft import show_progress


def progress_bar(total: int, desc: str, unit: str, enabled: bool) -> Any:
    """A tqdm bar (rate and ETA) on a terminal; a no-op object otherwise."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not show_progress(enabled), dynamic_ncols=True)


@torch.inference_mode()
def generate(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 128,
             batch_size: int = 32, progress: bool = True) -> list[str]:
    """Greedy continuations of ``prompts`` (new text only, special tokens dropped).

    Prompts are encoded as in training (``prompt_ids``), sorted by length so each batch pads
    little, left-padded, and generated until eos or ``max_new_tokens``. Results come back in
    input order. Inside :func:`domdistill.distributed.sharded` each process generates its share
    of the batches and every process gets all results.
    """
    if not prompts:
        return []
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    pad = pad_id(tokenizer)
    eos = tokenizer.eos_token_id
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                               pad_token_id=pad, eos_token_id=eos, bos_token_id=tokenizer.bos_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    batches = dist.my_batches([order[s:s + batch_size] for s in range(0, len(order), batch_size)])
    out: dict[int, str] = {}
    bar = progress_bar(sum(map(len, batches)), "generate", "prompt", progress)
    try:
        for idx in batches:
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                n = len(encoded[i])
                ids[r, width - n:] = torch.tensor(encoded[i], dtype=torch.long)
                mask[r, width - n:] = 1
            seqs = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                  generation_config=gen_cfg)
            for r, i in enumerate(idx):
                new = seqs[r, width:].tolist()
                if eos is not None and eos in new:
                    new = new[:new.index(eos)]
                out[i] = tokenizer.decode(new, skip_special_tokens=True)
            bar.update(len(idx))
    finally:
        bar.close()
        model.train(was_training)
    out = dist.gather_rows(out)
    return [out[i] for i in range(len(prompts))]
