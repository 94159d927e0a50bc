"""Students made from the real SmolLM2-135M-Instruct: depth pruning and a fresh same-family model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from domdistill.config import StudentConfig, config_from_dict
from domdistill.errors import ConfigError
from domdistill.models.loading import load_model_and_tokenizer, load_student
from domdistill.models.shrink import depth_pruned, fresh_like, kept_layers
from domdistill.models.tiny import count_parameters


@pytest.fixture(scope="module")
def smol(smollm2: Path):
    torch.manual_seed(0)
    return load_model_and_tokenizer(smollm2, "float32")


def _logits(model, tok, text: str = "The derivative of x^2 is") -> torch.Tensor:
    with torch.no_grad():
        return model(**tok(text, return_tensors="pt")).logits


@pytest.mark.parametrize("total,keep", [(30, 6), (30, 2), (30, 30), (7, 3), (12, 5), (30, 1)])
def test_kept_layers_are_evenly_spaced_with_first_and_last(total, keep):
    layers = kept_layers(total, keep)
    assert len(layers) == keep and layers == sorted(set(layers))
    assert layers[-1] == total - 1 and (keep == 1 or layers[0] == 0)
    gaps = [b - a for a, b in zip(layers, layers[1:])]
    assert not gaps or max(gaps) - min(gaps) <= 1


def test_kept_layers_out_of_range_names_the_field():
    with pytest.raises(ConfigError, match="cannot keep 31 of 30") as err:
        kept_layers(30, 31)
    assert err.value.field == "student.num_layers"


def test_depth_pruned_smollm2_copies_the_kept_layers_and_ties_the_head(smol, tmp_path):
    model, tok = smol
    before = _logits(model, tok)
    small = depth_pruned(model, 6)
    assert small.config.num_hidden_layers == 6 and model.config.num_hidden_layers == 30
    assert small.config.pruned_from == {"layers": [0, 6, 12, 17, 23, 29], "of": 30}
    for new, old in enumerate([0, 6, 12, 17, 23, 29]):
        for (name, a), (_, b) in zip(small.model.layers[new].state_dict().items(),
                                     model.model.layers[old].state_dict().items()):
            assert torch.equal(a, b), name
    assert torch.equal(small.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert torch.equal(small.model.norm.weight, model.model.norm.weight)
    assert small.lm_head.weight.data_ptr() == small.model.embed_tokens.weight.data_ptr()
    per_layer = count_parameters(model.model.layers[0])
    assert count_parameters(model) - count_parameters(small) == 24 * per_layer
    assert torch.equal(_logits(model, tok), before)  # the source is left as it was
    small.save_pretrained(tmp_path / "pruned")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert again.config.num_hidden_layers == 6
    assert torch.allclose(_logits(again, tok), _logits(small, tok), atol=1e-5)
    assert not torch.allclose(_logits(small, tok), before, atol=1e-2)


def test_keeping_every_layer_reproduces_the_model(smol):
    model, tok = smol
    assert torch.allclose(_logits(depth_pruned(model, 30), tok), _logits(model, tok), atol=1e-5)


def test_fresh_student_shares_the_vocabulary_with_seeded_random_weights(smol):
    model, tok = smol
    a, b, c = fresh_like(model, 4, seed=1), fresh_like(model, 4, seed=1), fresh_like(model, 4, seed=2)
    assert a.config.num_hidden_layers == 4 and a.config.vocab_size == model.config.vocab_size == len(tok)
    assert torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    assert not torch.equal(a.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_load_student_depth_prunes_the_reference_model():
    model, tok = load_student(StudentConfig(model="smollm2-135m-instruct", init="depth_pruned",
                                            num_layers=3, dtype="float32"))
    assert model.config.num_hidden_layers == 3 and tok.chat_template


@pytest.mark.parametrize("student,message", [
    ({"init": "depth_pruned"}, "init: depth_pruned needs num_layers"),
    ({"num_layers": 4}, "shrinks the model only with init: depth_pruned or fresh"),
])
def test_shrink_settings_are_checked_when_the_config_loads(student, message):
    with pytest.raises(ConfigError, match=message) as err:
        config_from_dict({"student": {"model": "smollm2-135m-instruct", **student}})
    assert "student" in str(err.value)
