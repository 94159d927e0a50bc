"""The real pretrained reference model (SmolLM2-135M-Instruct, shipped as GGUF): conversion into an
HF folder, its chat template in training, scoring and evaluation, and long inputs cut one way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from domdistill.data.example import DomainExample
from domdistill.data.templates import CUT_MARK, StudentTemplate, prompt_ids, render_prompt
from domdistill.errors import ConfigError
from domdistill.models.gguf import converted_folder, resolve_model_name
from domdistill.training.data import IGNORE_INDEX, encode_pair

LABELS = ["earn", "acq", "crude", "money-fx"]


@pytest.fixture(scope="module")
def tok(smollm2: Path):
    return AutoTokenizer.from_pretrained(str(smollm2))


def test_converted_folder_gives_the_gguf_models_logits(smollm2_gguf: Path, smollm2: Path, tok) -> None:
    """The folder is an ordinary HF model (safetensors, tokenizer, chat template) whose logits
    equal those of the GGUF file as transformers reads it."""
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in smollm2.iterdir()}
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    text = render_prompt(tok, "Assign a topic to the text.\nOil prices rose sharply.\n")
    ids = torch.tensor([prompt_ids(tok, text)])
    direct = AutoModelForCausalLM.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    folder = AutoModelForCausalLM.from_pretrained(str(smollm2))
    assert folder.config.tie_word_embeddings and folder.config.num_hidden_layers == 30
    with torch.no_grad():
        want, got = direct(ids).logits, folder(ids).logits
    assert want.shape == got.shape == (1, ids.shape[1], 49152)
    assert torch.allclose(want, got, atol=1e-5, rtol=0), float((want - got).abs().max())
    # the reference name and the .gguf path both resolve to that same folder, nothing reconverted
    assert resolve_model_name("smollm2-135m-instruct") == resolve_model_name(str(smollm2_gguf)) == str(smollm2)


def test_bad_gguf_files_are_refused_and_leave_no_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="GGUF file .*missing.gguf' does not exist"):
        resolve_model_name(str(tmp_path / "missing.gguf"))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + os.urandom(4096))
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match="cannot read GGUF file .*broken.gguf"):
        converted_folder(broken, cache_dir=cache)
    assert not any(cache.rglob("config.json"))


def test_training_masks_everything_but_the_assistant_reply(tok) -> None:
    template = StudentTemplate.for_task("classification", LABELS)
    ex = DomainExample(id="x1", domain="crude", input="Oil prices rose after OPEC cut output.",
                       answer="crude", rationale="The text is about oil supply.")
    prompt, completion = template.pair(ex)
    enc = encode_pair(tok, prompt, completion, max_seq_len=512)
    conversation = [{"role": "user", "content": prompt.rstrip("\n")}]
    rendered = tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    want_prompt = tok(rendered, add_special_tokens=False)["input_ids"]
    masked = [i for i, label in enumerate(enc["labels"]) if label == IGNORE_INDEX]
    assert masked == list(range(len(want_prompt)))  # exactly the prompt's positions
    assert enc["input_ids"][:len(want_prompt)] == want_prompt
    assert rendered.endswith("<|im_start|>assistant\n") and "You must select the topic" in rendered
    reply = enc["input_ids"][len(want_prompt):]
    assert enc["labels"][len(want_prompt):] == reply and reply[-1] == tok.eos_token_id
    assert tok.decode(reply, skip_special_tokens=True) == completion
    # scoring and evaluation prompt the student with the training prompt minus the reply
    fitted, cut = template.prompts(tok, [ex.input])
    assert cut == 0 and prompt_ids(tok, fitted[0]) == want_prompt


def test_long_inputs_lose_their_end_never_the_instruction(tok) -> None:
    limit = 120
    template = StudentTemplate.for_task("classification", LABELS, max_prompt_tokens=limit)
    long_text = "Title: Big oil deal. " + " ".join(f"barrels{i} shipped" for i in range(300))
    short_text = "Oil prices rose."
    (cut_prompt, short_prompt), n_cut = template.prompts(tok, [long_text, short_text])
    assert n_cut == 1 and short_prompt == template.prompt(short_text)
    ids = prompt_ids(tok, cut_prompt)
    assert limit - 6 <= len(ids) <= limit  # filled up to the limit, never past it
    assert cut_prompt.startswith(template.instruction + "\nTitle: Big oil deal.")
    assert cut_prompt.endswith(CUT_MARK + "\n" + template.cot_trigger + "\n")
    assert "money-fx" in cut_prompt
    pairs, n_cut = template.pairs(tok, [DomainExample(id="x2", domain="crude", input=long_text, answer="crude",
                                                      rationale="About oil.")])
    enc = encode_pair(tok, *pairs[0], max_seq_len=limit + 40)
    assert n_cut == 1 and enc["input_ids"][:len(ids)] == ids  # training keeps the whole prompt
    tiny = StudentTemplate.for_task("classification", LABELS, max_prompt_tokens=60)
    with pytest.raises(ConfigError, match="instruction, label set and answer format take") as err:
        tiny.prompts(tok, [short_text])
    assert err.value.field == "training.max_seq_len"


def _config(tmp_path: Path, shared_data: Path, **overrides) -> Path:
    cfg = {
        "method": {"name": "random_ft_cot", "budget": 8, "stages": 1},
        "data": {"path": str(shared_data / "reuters-r52" / "r52-train.txt"), "task": "classification",
                 "test_path": str(shared_data / "reuters-r52" / "r52-test.txt")},
        "student": {"model": "smollm2-135m-instruct", "lora": True},
        "teacher": {"kind": "recorded", "recorded_match": "r52", "recorded_paths": [
            str(shared_data / "baldistill-teacher" / "r52" / "r52_chatgpt_cot_train_count_50.jsonl.gz")]},
        "training": {"max_seq_len": 1024},
        "evaluation": {"max_new_tokens": 128},
        "output": {"dir": str(tmp_path / "run")},
    }
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        cfg[section][key] = value
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "domdistill"), *args], cwd=cwd, text=True,
                          capture_output=True, timeout=300, env=os.environ.copy())


@pytest.mark.parametrize("overrides, field, words", [
    ({"training__max_seq_len": 200, "evaluation__max_new_tokens": 64}, "training.max_seq_len",
     "the instruction, label set and answer format take"),
    ({"evaluation__max_new_tokens": 4}, "evaluation.max_new_tokens", "cannot hold the answer line"),
    pytest.param({"training__max_seq_len": 9000}, "training.max_seq_len",
                 "longer than the student's 8192 positions", marks=pytest.mark.slow),
])
def test_lengths_that_cannot_hold_the_answer_are_refused(tmp_path, shared_data, overrides, field, words):
    """52 R52 labels make a long instruction; a run and its dry run refuse before anything is
    written, naming the field."""
    config = _config(tmp_path, shared_data, **overrides)
    for extra in ([], ["--dry-run"]):
        proc = _cli("run", str(config), *extra, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert field in proc.stderr and words in " ".join(proc.stderr.split()), proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_dry_run_says_how_many_inputs_will_be_cut(tmp_path: Path, shared_data: Path) -> None:
    config = _config(tmp_path, shared_data, training__max_seq_len=400)
    proc = _cli("run", str(config), "--dry-run", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads(proc.stdout)
    prompts = plan["prompts"]
    # pool (duplicate documents dropped) and test set
    assert prompts["max_prompt_tokens"] == 400 - 128 and 9000 < prompts["inputs"] <= 6532 + 2568
    assert 0 < prompts["cut"] < prompts["inputs"]
    assert not (tmp_path / "run").exists()
