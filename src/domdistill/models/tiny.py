"""Tiny Llama-style students built from config, with a byte-level BPE tokenizer trained on the data.

They run on a CPU in seconds, so tests and the demo need no model download. Parameter counts
with a 512-token vocabulary (embeddings tied to the output layer), measured:

========  ======  ======  =====  ============  ============
preset    hidden  layers  heads  intermediate  parameters
========  ======  ======  =====  ============  ============
nano          32       2      4            64        37,024
micro         64       2      4           176       133,440
tiny         128       4      4           344       857,216
small        256       6      8           688     4,877,568
base         512       8      8          1024    21,242,368
========  ======  ======  =====  ============  ============
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel, PreTrainedTokenizerFast

from domdistill.errors import ConfigError
from domdistill.io import atomic_dir

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]

TINY_PRESETS: dict[str, dict[str, int]] = {
    "nano": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    "micro": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=176),
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=344),
    "small": dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=8, intermediate_size=688),
    "base": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, intermediate_size=1024),
}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, save_dir: str | Path | None = None,
                    padding_side: str = "right") -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``; every digit is its own token.

    Special tokens: ``<pad>``, ``<s>``, ``</s>``, ``<unk>``. Encoding adds no special tokens:
    callers append ``eos_token`` themselves. Any text round-trips through encode/decode.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ConfigError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} "
                          f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens), got {vocab_size}",
                          field="vocab_size")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                 eos_token="</s>", unk_token="<unk>", padding_side=padding_side,
                                 clean_up_tokenization_spaces=False)
    if save_dir is not None:
        hf.save_pretrained(save_dir)
    return hf


def preset_config(preset: str, tokenizer: PreTrainedTokenizerFast, **overrides: Any) -> LlamaConfig:
    """The LlamaConfig of a preset, sized to ``tokenizer`` and with its special-token ids."""
    if preset not in TINY_PRESETS:
        raise ConfigError(f"unknown tiny-model preset {preset!r} (known: {', '.join(TINY_PRESETS)})",
                          field="student.model")
    kwargs: dict[str, Any] = dict(TINY_PRESETS[preset])
    kwargs.update(max_position_embeddings=1024, num_key_value_heads=kwargs["num_attention_heads"],
                  rms_norm_eps=1e-5, tie_word_embeddings=True)
    kwargs.update(overrides)
    return LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       **kwargs)


def build_tiny_model(preset_or_config: str | LlamaConfig, tokenizer: PreTrainedTokenizerFast,
                     seed: int = 0, **overrides: Any) -> PreTrainedModel:
    """A freshly initialised Llama model; the same seed gives the same weights.

    ``preset_or_config`` is a name in ``TINY_PRESETS`` or a ``LlamaConfig`` (its vocabulary and
    special-token ids are set from ``tokenizer``). The global torch RNG is left untouched.
    """
    if isinstance(preset_or_config, str):
        config = preset_config(preset_or_config, tokenizer, **overrides)
    else:
        config = LlamaConfig.from_dict({**preset_or_config.to_dict(), **overrides,
                                        "vocab_size": len(tokenizer),
                                        "bos_token_id": tokenizer.bos_token_id,
                                        "eos_token_id": tokenizer.eos_token_id,
                                        "pad_token_id": tokenizer.pad_token_id})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def texts_fingerprint(texts: Iterable[str]) -> str:
    """A short hash of a text collection (order-sensitive), used to key cached tiny models."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def create_tiny_model(out_dir: str | Path, texts: Iterable[str], preset: str = "tiny",
                      vocab_size: int = 512, seed: int = 0) -> Path:
    """Train a tokenizer on ``texts``, build a preset model, save both to ``out_dir`` atomically.

    The folder loads with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``.
    """
    out = Path(out_dir)
    if preset not in TINY_PRESETS:
        raise ConfigError(f"unknown tiny-model preset {preset!r} (known: {', '.join(TINY_PRESETS)})",
                          field="student.model")
    tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    model = build_tiny_model(preset, tokenizer, seed=seed)
    with atomic_dir(out) as tmp:
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
    return out
