"""Per-domain perplexity of plain LM text: ``exp`` of the token-weighted mean next-token NLL.

Each text is scored as a whole sequence after the BOS token (the same encoding the DDK recipe
trains on), truncated to ``max_length`` tokens, in eval mode without gradients (the scoring of
:func:`domdistill.selection.scoring.completion_stats`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from domdistill.selection.scoring import completion_stats


def text_losses(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int,
                batch_size: int = 16) -> list[tuple[float, int]]:
    """(summed NLL, token count) of each text."""
    stats = completion_stats(model, tokenizer, [""] * len(texts), list(texts),
                             batch_size=batch_size, max_length=max_length)
    return [(s.nll, s.tokens) for s in stats]


def domain_perplexities(model: Any, tokenizer: Any, texts: Mapping[str, Sequence[str]],
                        max_length: int, batch_size: int = 16) -> dict[str, float]:
    """Perplexity per domain (token-weighted within the domain)."""
    out = {}
    for domain, items in texts.items():
        losses = text_losses(model, tokenizer, items, max_length, batch_size)
        nll = sum(x for x, _ in losses)
        n = sum(t for _, t in losses)
        out[domain] = math.exp(nll / max(n, 1))
    return out
