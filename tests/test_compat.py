"""Teacher/student compatibility for logit KD, with real BPE tokenizers and Llama configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import pre_tokenizers
from transformers import LlamaConfig, PreTrainedTokenizerFast

from domdistill.errors import ConfigError
from domdistill.models.compat import check_kd_compatible
from domdistill.models.tiny import train_tokenizer


@pytest.fixture(scope="module")
def corpora(shared_data: Path) -> dict[str, list[str]]:
    news = [line.split("\t", 1)[1] for line in
            (shared_data / "reuters-r52" / "r52-train.txt").read_text().splitlines()[:300]]
    math = [json.loads(line)["problem"] for line in
            (shared_data / "math-500" / "test.jsonl").read_text().splitlines()[:300]]
    return {"news": news, "math": math}


@pytest.fixture(scope="module")
def news_tok(corpora) -> PreTrainedTokenizerFast:
    return train_tokenizer(corpora["news"], vocab_size=400)


def _cfg(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=4, intermediate_size=64)


def test_same_tokenizer_same_size(corpora, news_tok):
    again = train_tokenizer(corpora["news"], vocab_size=400)
    n = len(news_tok)
    assert check_kd_compatible(news_tok, again, _cfg(n), _cfg(n)) == n


def test_padded_rows_give_the_shared_size(news_tok):
    n = len(news_tok)
    assert check_kd_compatible(news_tok, news_tok, _cfg(n + 128), _cfg(n)) == n
    assert check_kd_compatible(news_tok, news_tok, _cfg(n + 8), {"vocab_size": n + 64}) == n + 8


def test_different_tokenizers_name_the_first_differing_id(corpora, news_tok):
    math_tok = train_tokenizer(corpora["math"], vocab_size=400)
    t_ids = {i: t for t, i in news_tok.get_vocab().items()}
    s_ids = {i: t for t, i in math_tok.get_vocab().items()}
    first = min(i for i in t_ids if t_ids[i] != s_ids.get(i))
    n = max(len(news_tok), len(math_tok))
    with pytest.raises(ConfigError) as err:
        check_kd_compatible(news_tok, math_tok, _cfg(n), _cfg(n))
    assert f"first differing token id {first}" in str(err.value)
    assert repr(t_ids[first]) in str(err.value)
    assert err.value.field == "tokenizer"


def test_token_beyond_the_other_models_rows(news_tok):
    n = len(news_tok)
    with pytest.raises(ConfigError) as err:
        check_kd_compatible(news_tok, news_tok, _cfg(n), _cfg(n - 10))
    assert f"only {n - 10} output rows" in str(err.value)
    assert err.value.field == "student.vocab_size"
    with pytest.raises(ConfigError, match="teacher.vocab_size"):
        check_kd_compatible(news_tok, news_tok, {"vocab_size": None}, _cfg(n))


def test_same_vocab_but_different_splitting(corpora, news_tok):
    other = train_tokenizer(corpora["news"], vocab_size=400)
    other.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    n = len(news_tok)
    with pytest.raises(ConfigError) as err:
        check_kd_compatible(news_tok, other, _cfg(n), _cfg(n))
    assert "pre_tokenizer" in str(err.value)
