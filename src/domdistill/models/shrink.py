"""Smaller students made from a bigger model of the same family, before distilling into them.

* Depth pruning (as in Minitron and Sheared-LLaMA): keep ``n`` of the model's decoder layers
  and copy everything else (embeddings, final norm, lm_head) as it is. Which layers: evenly
  spaced over the depth with the first and the last always kept (:func:`kept_layers`); the first
  layers turn token embeddings into the residual stream the others read and the last one writes
  what the lm_head reads, and spreading the rest keeps every depth's features represented.
  Minitron ranks layers by importance instead; a list of indices can be given for that.
* Fresh: the model's architecture (optionally with ``n`` layers) with new random weights,
  sharing its tokenizer and vocabulary, for a small model trained from scratch.

Both give an ordinary transformers model: ``save_pretrained`` writes it as an HF folder that
``from_pretrained`` (and ``student.model``) loads like any other. In a run, ``student.init`` and
``student.num_layers`` ask for either, made from ``student.model`` when it is loaded.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from domdistill.errors import ConfigError

_LAYER_KEY = re.compile(r"^(.*\.layers\.)(\d+)(\..*)$")


def num_layers(config: Any) -> int:
    """Decoder layers of a causal-LM config (``num_hidden_layers``)."""
    n = getattr(config, "num_hidden_layers", None)
    if not isinstance(n, int) or n <= 0:
        raise ConfigError(f"{type(config).__name__} has no num_hidden_layers; depth pruning "
                          "needs a decoder-only model with a stack of layers", field="student.model")
    return n


def kept_layers(total: int, keep: int) -> list[int]:
    """``keep`` layer indices out of ``total``, evenly spaced, first and last included."""
    if not 1 <= keep <= total:
        raise ConfigError(f"cannot keep {keep} of {total} layers (expected 1 to {total})",
                          field="student.num_layers")
    if keep == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def _smaller_config(config: Any, layers: Sequence[int]) -> Any:
    small = copy.deepcopy(config)
    small.num_hidden_layers = len(layers)
    types = getattr(config, "layer_types", None)
    if isinstance(types, (list, tuple)) and len(types) == num_layers(config):
        small.layer_types = [types[i] for i in layers]  # sliding/full attention per kept layer
    return small


def depth_pruned(model: PreTrainedModel, layers: Sequence[int] | int) -> PreTrainedModel:
    """A new model holding ``layers`` (indices, or a count for :func:`kept_layers`) of
    ``model``'s decoder layers in order, and copies of every other weight. ``model`` is left as
    it was; tied embeddings stay tied."""
    total = num_layers(model.config)
    picked = kept_layers(total, layers) if isinstance(layers, int) else sorted(set(layers))
    if not picked or picked[0] < 0 or picked[-1] >= total:
        raise ConfigError(f"layer indices {list(layers)} are outside 0..{total - 1}",
                          field="student.num_layers")
    new_index = {old: new for new, old in enumerate(picked)}
    state = {}
    for key, value in model.state_dict().items():
        match = _LAYER_KEY.match(key)
        if match is None:
            state[key] = value
        elif int(match.group(2)) in new_index:
            state[f"{match.group(1)}{new_index[int(match.group(2))]}{match.group(3)}"] = value
    small = AutoModelForCausalLM.from_config(_smaller_config(model.config, picked),
                                             dtype=model.dtype)
    missing, unexpected = small.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if getattr(small.config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise ConfigError(f"depth pruning of {type(model).__name__} left weights unmatched "
                          f"(missing {sorted(set(missing) - tied)[:3]}, unexpected "
                          f"{sorted(unexpected)[:3]}); this architecture names its layers "
                          "differently", field="student.init")
    small.tie_weights()
    small.generation_config = copy.deepcopy(model.generation_config)
    small.config.pruned_from = {"layers": picked, "of": total}
    return small


def fresh_like(model: PreTrainedModel, layers: int | None = None, seed: int = 0) -> PreTrainedModel:
    """``model``'s architecture (with ``layers`` decoder layers if given) and new random weights,
    drawn from ``seed`` (the global random state is left as it was)."""
    total = num_layers(model.config)
    picked = kept_layers(total, layers) if layers is not None else list(range(total))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        small = AutoModelForCausalLM.from_config(_smaller_config(model.config, picked),
                                                 dtype=model.dtype)
    small.generation_config = copy.deepcopy(model.generation_config)
    return small


def shrink(model: PreTrainedModel, init: str, layers: int | None, seed: int = 0) -> PreTrainedModel:
    """The student ``student.init`` asks for: ``depth_pruned`` or ``fresh`` (else ``model``)."""
    if init == "depth_pruned":
        if layers is None:
            raise ConfigError("student.init: depth_pruned needs student.num_layers (how many of "
                              "the model's layers to keep)", field="student.num_layers")
        return depth_pruned(model, layers)
    if init == "fresh":
        return fresh_like(model, layers, seed)
    return model
