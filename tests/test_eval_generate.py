"""Batched generation, end-to-end evaluation of a trained tiny student, and ``domdistill eval``."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from domdistill.cli import app
from domdistill.config import EvaluationConfig, TrainingConfig
from domdistill.data.builtin import builtin_dataset, builtin_test_set
from domdistill.data.templates import StudentTemplate
from domdistill.errors import ConfigError
from domdistill.evaluation.generate import generate
from domdistill.evaluation.metrics import evaluate_model
from domdistill.evaluation.results import read_results
from domdistill.models.tiny import build_tiny_model, train_tokenizer
from domdistill.training.data import IGNORE_INDEX, PadCollator, encode_pair
from domdistill.training.sft import train_sft

TEMPLATE = StudentTemplate.for_task("builtin")


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A nano student fine-tuned for 40 steps on the built-in task, saved to a folder."""
    data = builtin_dataset(200, seed=0)
    pairs = [TEMPLATE.pair(ex) for ex in data]
    tok = train_tokenizer([p + c for p, c in pairs], vocab_size=300)
    model = build_tiny_model("nano", tok, seed=0)
    out = tmp_path_factory.mktemp("student")
    cfg = TrainingConfig(max_steps=40, batch_size=8, learning_rate=5e-3, save_steps=20, warmup_ratio=0.1)
    result = train_sft(model, tok, pairs, cfg, out / "checkpoints", progress=False)
    assert result.global_step == 40 and len(result.losses) == 40
    assert result.losses[-1][1] < result.losses[0][1] - 1.0  # it learned something
    result.model.save_pretrained(out / "final")
    tok.save_pretrained(out / "final")
    return result.model, tok, out / "final"


def test_completion_only_labels():
    tok = train_tokenizer(["hello world. The answer is: 42"] * 4, vocab_size=280)
    enc = encode_pair(tok, "hello world.\n", "The answer is: 42", max_seq_len=64)
    n_prompt = sum(x == IGNORE_INDEX for x in enc["labels"])
    assert enc["input_ids"][0] == tok.bos_token_id and n_prompt > 1
    assert enc["labels"][n_prompt:] == enc["input_ids"][n_prompt:]
    assert enc["input_ids"][-1] == tok.eos_token_id
    assert tok.decode(enc["input_ids"][n_prompt:-1]) == "The answer is: 42"
    short = encode_pair(tok, "hello world.\n" * 20, "The answer is: 42", max_seq_len=16)
    assert len(short["input_ids"]) == 16 and short["input_ids"][-1] == tok.eos_token_id
    batch = PadCollator(tok.pad_token_id)([enc, short])
    n = len(enc["input_ids"])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, max(n, 16))
    assert batch["attention_mask"][0].sum() == n and (batch["labels"][0, n:] == IGNORE_INDEX).all()
    assert (batch["input_ids"][0, n:] == tok.pad_token_id).all()


def test_batched_generation_matches_one_at_a_time(student):
    _, tok, _ = student
    model = build_tiny_model("micro", tok, seed=3)  # untrained: its output varies with the prompt
    prompts = [ex.input for ex in builtin_test_set(1, seed=1)]  # different last tokens
    batched = generate(model, tok, prompts, max_new_tokens=16, batch_size=8, progress=False)
    single = [generate(model, tok, [p], max_new_tokens=16, batch_size=1, progress=False)[0] for p in prompts]
    assert len(batched) == len(prompts)
    same = sum(a == b for a, b in zip(batched, single))
    assert same >= 0.9 * len(prompts), list(zip(batched, single))
    assert len(set(single)) > 1  # outputs depend on the prompt, so order is really checked
    assert all(tok.eos_token not in x for x in batched)


def test_evaluate_model_blocks_and_perplexity(student, tmp_path):
    model, tok, _ = student
    test = builtin_test_set(3, seed=2)
    cfg = EvaluationConfig(max_new_tokens=24, batch_size=16, bootstrap=100)
    m = evaluate_model(model, tok, test, "builtin", TEMPLATE, cfg, progress=False,
                       predictions_path=tmp_path / "pred.jsonl")
    assert set(m) >= {"per_domain", "macro", "micro", "head", "tail", "macro_ci", "n"}
    assert m["n"] == len(test) and set(m["per_domain"]) == set(test.domains)
    preds = [json.loads(x) for x in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert len(preds) == len(test)
    assert m["micro"]["accuracy"] == pytest.approx(sum(p["correct"] for p in preds) / len(preds))
    # perplexity of the gold completion, checked with the model's own loss on each example
    dom = test.domains[0]
    nll, ntok = 0.0, 0
    with torch.no_grad():
        for ex in test.by_domain[dom]:
            enc = encode_pair(tok, *TEMPLATE.pair(ex), max_seq_len=1024)
            n = sum(x != IGNORE_INDEX for x in enc["labels"][1:])
            loss = model(input_ids=torch.tensor([enc["input_ids"]]), labels=torch.tensor([enc["labels"]])).loss
            nll += float(loss) * n
            ntok += n
    assert m["per_domain"][dom]["perplexity"] == pytest.approx(math.exp(nll / ntok), rel=1e-4)


def test_eval_cli(student, tmp_path):
    _, _, folder = student
    out = tmp_path / "results.json"
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "--model", str(folder), "--data", "builtin", "--builtin-per-domain", "2",
                              "--max-new-tokens", "16", "--bootstrap", "50", "--out", str(out),
                              "--no-progress", "--head", "addition,comparison", "--tail", "weekday"])
    assert res.exit_code == 0, res.output
    data = read_results(out)
    assert data["metrics"]["head"]["domains"] == ["addition", "comparison"]
    assert data["metrics"]["tail"]["n"] == 2 and data["wall_seconds"] > 0
    assert "macro" in res.output
    bad = runner.invoke(app, ["eval", "--model", str(tmp_path / "nope"), "--data", "builtin"])
    assert isinstance(bad.exception, ConfigError) and "does not exist" in str(bad.exception)
    assert not (tmp_path / "nope").exists()
