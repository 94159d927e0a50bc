"""Load students and teachers: a tiny preset built from config, an HF hub id, a local folder,
a GGUF file or a reference model (see ``gguf.py``).

``load_student`` adds the training options of ``StudentConfig``: LoRA through peft, QLoRA (4-bit
NF4 base, CUDA only) and gradient checkpointing.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase,
)

from domdistill.config import StudentConfig
from domdistill.errors import ConfigError
from domdistill.models.gguf import names_a_path, resolve_model_name
from domdistill.models.shrink import shrink
from domdistill.models.tiny import (
    TINY_PRESETS, build_tiny_model, create_tiny_model, texts_fingerprint, train_tokenizer,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype = "auto") -> torch.dtype:
    """``auto`` is bfloat16 where the CUDA GPU supports it, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r} (expected auto, {', '.join(DTYPES)})",
                          field="student.dtype")
    return DTYPES[dtype]


def is_tiny_preset(name: str) -> bool:
    """Whether ``name`` names a built-in tiny preset rather than a hub id or folder."""
    return name in TINY_PRESETS


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, for_generation: bool = False,
                      source: str | None = None) -> PreTrainedTokenizerBase:
    """Give the tokenizer a pad token (eos when missing) and the padding side for its use."""
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ConfigError("tokenizer has no pad, eos or unk token to pad with", path=source)
        tokenizer.pad_token = fallback
    tokenizer.padding_side = "left" if for_generation else "right"
    return tokenizer


def _sync_generation_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    if gen is not None and gen.eos_token_id is None:
        gen.eos_token_id = tokenizer.eos_token_id


def load_model_and_tokenizer(name_or_path: str | Path, dtype: str | torch.dtype = "auto",
                             for_generation: bool = False, **model_kwargs: Any
                             ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from an HF hub id or a local folder.

    The tokenizer pads (with eos when it has no pad token), on the left when ``for_generation``.
    Extra keyword arguments go to ``AutoModelForCausalLM.from_pretrained``.
    """
    name = resolve_model_name(str(name_or_path))
    if names_a_path(name) and not Path(name).expanduser().exists():
        raise ConfigError(f"model folder {name!r} does not exist", field="model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=resolve_dtype(dtype), **model_kwargs)
    except Exception as err:  # noqa: BLE001 - damaged files raise many kinds (safetensors, json, ...)
        first = (str(err).splitlines() or [type(err).__name__])[0][:200]
        raise ConfigError(f"cannot load model {name!r}: expected a local folder saved with "
                          f"save_pretrained or a reachable HF hub id; a damaged file? "
                          f"({type(err).__name__}: {first})", field="model") from None
    prepare_tokenizer(tokenizer, for_generation, source=name)
    _sync_generation_ids(model, tokenizer)
    return model, tokenizer


def tiny_cache_path(cache_dir: str | Path, preset: str, vocab_size: int, seed: int,
                    texts: list[str]) -> Path:
    """Folder of a cached tiny model: one per preset, vocabulary, seed and tokenizer texts."""
    return Path(cache_dir) / f"{preset}-v{vocab_size}-s{seed}-{texts_fingerprint(texts)}"


def check_qlora() -> None:
    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("QLoRA (load_in_4bit) needs a CUDA GPU and the bitsandbytes package "
                          f"(CUDA available: {torch.cuda.is_available()}, bitsandbytes installed: "
                          f"{importlib.util.find_spec('bitsandbytes') is not None}); "
                          "set student.load_in_4bit: false to train in full precision",
                          field="student.load_in_4bit")


def _default_texts() -> list[str]:
    from domdistill.data.builtin import builtin_dataset
    from domdistill.data.templates import StudentTemplate

    template = StudentTemplate()
    return ["".join(template.pair(ex)) for ex in builtin_dataset()]


def load_student(cfg: StudentConfig, texts: Iterable[str] | None = None,
                 cache_dir: str | Path | None = None, for_generation: bool = False
                 ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The student described by ``cfg``, ready to train.

    A tiny preset trains its tokenizer on ``texts`` (default: the built-in task's prompts and
    completions) and is rebuilt identically for the same preset, vocabulary, seed and texts; with
    ``cache_dir`` it is saved there once and reused. Other names load as hub ids or folders.
    ``cfg.init`` then depth-prunes the model or re-draws its weights (:mod:`.shrink`).
    """
    if cfg.load_in_4bit:
        check_qlora()
    model_kwargs: dict[str, Any] = {}
    if cfg.load_in_4bit:
        from transformers import BitsAndBytesConfig

        model_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        model_kwargs["device_map"] = {"": torch.cuda.current_device()}

    if is_tiny_preset(cfg.model):
        text_list = list(texts) if texts is not None else _default_texts()
        if not text_list:
            raise ConfigError("no texts to train the tiny model's tokenizer on", field="student.model")
        if cache_dir is None and not cfg.load_in_4bit:
            tokenizer = prepare_tokenizer(train_tokenizer(text_list, cfg.vocab_size), for_generation)
            model = build_tiny_model(cfg.model, tokenizer, seed=cfg.init_seed)
            model = model.to(resolve_dtype(cfg.dtype))
        else:
            if cache_dir is None:
                import tempfile
                cache_dir = tempfile.mkdtemp(prefix="domdistill-tiny-")
            path = tiny_cache_path(cache_dir, cfg.model, cfg.vocab_size, cfg.init_seed, text_list)
            if not (path / "config.json").is_file():
                create_tiny_model(path, text_list, preset=cfg.model, vocab_size=cfg.vocab_size,
                                  seed=cfg.init_seed)
            model, tokenizer = load_model_and_tokenizer(path, cfg.dtype, for_generation, **model_kwargs)
    else:
        model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.dtype, for_generation,
                                                    **model_kwargs)
    model = shrink(model, cfg.init, cfg.num_layers, cfg.init_seed)
    return apply_training_options(model, cfg), tokenizer


def apply_training_options(model: PreTrainedModel, cfg: StudentConfig) -> PreTrainedModel:
    """Gradient checkpointing, k-bit preparation and a fresh LoRA adapter, as ``cfg`` asks."""
    if cfg.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif cfg.gradient_checkpointing:
        enable_checkpointing(model)
    if cfg.gradient_checkpointing:
        model.config.use_cache = False
    if cfg.lora or cfg.load_in_4bit:
        model = add_lora(model, cfg)
    return model


def enable_checkpointing(model: PreTrainedModel) -> None:
    """Recompute activations in the backward pass (non-reentrant, so frozen inputs are fine)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def is_checkpointing(model: PreTrainedModel) -> bool:
    """Whether activation (gradient) checkpointing is on for ``model`` or the model inside a peft wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    flag = getattr(type(base), "is_activation_checkpointing", None)
    return bool(base.is_activation_checkpointing if flag is not None else base.is_gradient_checkpointing)


def add_lora(model: PreTrainedModel, cfg: StudentConfig) -> PreTrainedModel:
    """Wrap ``model`` with a new LoRA adapter on every linear layer; only the adapter trains.
    The adapter's random initialisation is seeded with ``cfg.init_seed`` (the same adapter in
    every process and every rerun; the global random state is left as it was)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules="all-linear", bias="none", task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=_cuda_devices()), warnings.catch_warnings():
        # peft asks transformers 5 for a deprecated alias; the warning is for peft, not users
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        torch.manual_seed(cfg.init_seed)
        return get_peft_model(model, lora)


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
