"""Loading students: tiny presets (cached), saved folders, LoRA, QLoRA's CPU error."""

from __future__ import annotations

import pytest
import torch

from domdistill.config import StudentConfig
from domdistill.errors import ConfigError
from domdistill.models.loading import (
    is_checkpointing, load_model_and_tokenizer, load_student, resolve_dtype,
)
from domdistill.models.tiny import create_tiny_model

TEXTS = [f"Subtract {b} from {a}.\n{a} - {b} = {a - b}\nThe answer is: {a - b}"
         for a in range(10, 30) for b in range(10)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return create_tiny_model(tmp_path_factory.mktemp("m") / "nano", TEXTS, preset="nano",
                             vocab_size=300, seed=1)


def test_load_by_path_sets_padding(saved):
    model, tok = load_model_and_tokenizer(saved)
    assert tok.padding_side == "right" and tok.pad_token_id is not None
    assert model.dtype == resolve_dtype("auto")
    if not torch.cuda.is_available():
        assert model.dtype == torch.float32
    _, gen_tok = load_model_and_tokenizer(str(saved), dtype="bfloat16", for_generation=True)
    assert gen_tok.padding_side == "left"
    assert next(load_model_and_tokenizer(saved, dtype="bfloat16")[0].parameters()).dtype == torch.bfloat16


def test_missing_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_model_and_tokenizer(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="cannot load model"):
        load_model_and_tokenizer(empty)


def test_pad_token_falls_back_to_eos(saved, tmp_path):
    model, tok = load_model_and_tokenizer(saved)
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "nopad")
    model.save_pretrained(tmp_path / "nopad")
    _, tok2 = load_model_and_tokenizer(tmp_path / "nopad")
    assert tok2.pad_token == tok2.eos_token == "</s>"


def test_preset_student_is_deterministic_and_cached(tmp_path):
    cfg = StudentConfig(model="nano", vocab_size=300, init_seed=5)
    m1, t1 = load_student(cfg, texts=TEXTS)
    m2, t2 = load_student(cfg, texts=TEXTS, cache_dir=tmp_path)
    (cached,) = list(tmp_path.iterdir())
    assert cached.name.startswith("nano-v300-s5-")
    m3, _ = load_student(cfg, texts=TEXTS, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == [cached]
    batch = t1(TEXTS[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = [m.eval()(**batch).logits for m in (m1, m2, m3)]
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])
    assert t1.get_vocab() == t2.get_vocab()
    load_student(cfg.model_copy(update={"init_seed": 6}), texts=TEXTS, cache_dir=tmp_path)
    load_student(cfg, texts=TEXTS[:50], cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 3


def test_lora_trains_only_adapters(saved):
    cfg = StudentConfig(model=str(saved), lora=True, lora_r=4, gradient_checkpointing=True)
    model, tok = load_student(cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("lora_" in n for n in trainable if "mlp" in n)
    assert any("lora_" in n for n in trainable if "self_attn" in n)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any("embed_tokens" in n for n in frozen)
    model.train()
    batch = tok(TEXTS[:2], padding=True, return_tensors="pt")
    out = model(**batch, labels=batch["input_ids"])
    out.loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert is_checkpointing(model)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_qlora_without_cuda_is_a_clear_error(saved):
    cfg = StudentConfig(model=str(saved), load_in_4bit=True)
    with pytest.raises(ConfigError, match="QLoRA.*CUDA GPU and the bitsandbytes") as info:
        load_student(cfg)
    assert info.value.field == "student.load_in_4bit"
