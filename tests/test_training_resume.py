"""Kill fine-tuning with SIGKILL (between steps and half-way through checkpoint writes), resume,
and finish exactly where an uninterrupted run with the same seed finishes."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from domdistill.config import EvaluationConfig
from procs import run_until
from domdistill.data.builtin import builtin_test_set
from domdistill.data.templates import StudentTemplate
from domdistill.evaluation.metrics import evaluate_model
from domdistill.models.loading import load_model_and_tokenizer
from domdistill.training import checkpoints as ck
from domdistill.training.sft import PAUSE_ENV

WORKER = Path(__file__).with_name("_sft_worker.py")


def launch(out: Path, resume: bool, kill_on: str | None = None, pause_at: int | None = None,
           extra: tuple[str, ...] = ()) -> bool:
    """Run the worker; SIGKILL it when a stderr line starts with ``kill_on``. True if killed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DOMDISTILL_PRINT_STEPS": "1"}
    env.pop(PAUSE_ENV, None)
    if pause_at is not None:
        env[PAUSE_ENV] = str(pause_at)
    cmd = [sys.executable, str(WORKER), str(out), *extra] + (["--resume"] if resume else [])
    return run_until(cmd, env, kill_on)


def assert_only_complete(ckpt_dir: Path) -> None:
    """Every folder named checkpoint-N is complete (partial writes live only in .staging)."""
    for c in ck.checkpoints(ckpt_dir):
        assert ck.is_complete(c), f"{c} is visible but incomplete"


def plant_corrupt(ckpt_dir: Path) -> None:
    """Newer-looking checkpoints that must never be loaded: no manifest; a truncated file."""
    good = ck.latest_checkpoint(ckpt_dir)
    assert good is not None
    a, b = ckpt_dir / "checkpoint-900", ckpt_dir / "checkpoint-950"
    shutil.copytree(good, a)
    (a / ck.MANIFEST).unlink()
    shutil.copytree(good, b)
    opt = b / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:100])
    assert ck.latest_checkpoint(ckpt_dir) == good


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    assert not launch(out, resume=False)
    return out


def compare(run: Path, ref: Path) -> None:
    got, want = json.loads((run / "result.json").read_text()), json.loads((ref / "result.json").read_text())
    assert got["global_step"] == want["global_step"] == 36
    assert [s for s, _ in got["losses"]] == list(range(1, 37))
    assert [v for _, v in got["losses"]] == pytest.approx([v for _, v in want["losses"]], abs=1e-6)
    assert got["final_loss"] == pytest.approx(want["final_loss"], abs=1e-6)
    w_got = load_file(run / "final" / "model.safetensors")
    w_want = load_file(ref / "final" / "model.safetensors")
    assert w_got.keys() == w_want.keys()
    for k in w_want:
        torch.testing.assert_close(w_got[k], w_want[k], atol=1e-6, rtol=0)


def _eval(folder: Path) -> dict:
    model, tok = load_model_and_tokenizer(folder, dtype="float32", for_generation=True)
    model.generation_config.eos_token_id = tok.eos_token_id
    cfg = EvaluationConfig(max_new_tokens=16, batch_size=32, bootstrap=0)
    return evaluate_model(model, tok, builtin_test_set(2, seed=0), "builtin",
                          StudentTemplate.for_task("builtin"), cfg, progress=False)


@pytest.mark.slow  # the fast suite kills and resumes the LoRA student (next test)
def test_kill_anywhere_then_resume_matches_uninterrupted(tmp_path, reference):
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    # (kill condition, pause-in-save step, corrupt checkpoints planted before this launch)
    plan = [("STEP 3", None, False), ("PAUSED_IN_SAVE 8", 8, False), ("STEP 14", None, False),
            ("PAUSED_IN_SAVE 24", 24, True), ("PAUSED_IN_SAVE 36", 36, False)]
    kills = 0
    for i, (kill_on, pause, corrupt) in enumerate(plan):
        if corrupt:
            plant_corrupt(ckpts)
        assert launch(out, resume=i > 0, kill_on=kill_on, pause_at=pause), f"not killed at {kill_on}"
        kills += 1
        assert_only_complete(ckpts)
        if pause is not None:  # killed half-way through writing checkpoint-`pause`
            assert (ckpts / ck.STAGING / f"checkpoint-{pause}").is_dir()
            assert not (ckpts / f"checkpoint-{pause}").exists()
            assert (ckpts / ck.STAGING / f"checkpoint-{pause}" / "model.safetensors").exists()
            assert not (ckpts / ck.STAGING / f"checkpoint-{pause}" / "optimizer.pt").exists()
    assert kills >= 5
    expected_start = ck.latest_checkpoint(ckpts)
    assert expected_start is not None and expected_start.name == "checkpoint-32"
    assert not launch(out, resume=True)
    result = json.loads((out / "result.json").read_text())
    assert result["resumed_from"] == str(expected_start)
    compare(out, reference)
    assert [c.name for c in ck.checkpoints(ckpts)] == ["checkpoint-32", "checkpoint-36"]  # planted ones pruned
    assert not (ckpts / ck.STAGING).exists()
    state = ck.read_method_state(ck.latest_checkpoint(ckpts))
    assert state["stage"] == 2 and state["note"] == "saved by the trainer" and len(state["selected"]) == 3
    assert _eval(out / "final") == _eval(reference / "final")


@pytest.mark.slow
@pytest.mark.parametrize("kill_on,pause", [("STEP 2", None), ("PAUSED_IN_SAVE 4", 4), ("STEP 10", None),
                                           ("PAUSED_IN_SAVE 16", 16), ("STEP 21", None),
                                           ("PAUSED_IN_SAVE 28", 28), ("STEP 33", None)])
def test_each_kill_point_separately(tmp_path, reference, kill_on, pause):
    out = tmp_path / "run"
    assert launch(out, resume=False, kill_on=kill_on, pause_at=pause)
    assert_only_complete(out / "checkpoints")
    assert not launch(out, resume=True)
    compare(out, reference)


def test_refuses_to_mix_runs_without_resume(tmp_path, reference):
    from domdistill.config import TrainingConfig
    from domdistill.errors import RunFolderError
    from domdistill.training.sft import train_sft

    model, tok = load_model_and_tokenizer(reference / "final", dtype="float32")
    with pytest.raises(RunFolderError, match="resume"):
        train_sft(model, tok, [("a", "b")], TrainingConfig(max_steps=1), reference / "checkpoints",
                  progress=False)


def test_lora_adapter_killed_and_resumed_matches_uninterrupted(tmp_path):
    """The same for a LoRA adapter (dropout on, so the restored RNG states matter too): the
    checkpoints hold the adapter, and the resumed run ends with the same adapter weights."""
    ref, out = tmp_path / "reference", tmp_path / "run"
    assert not launch(ref, resume=False, extra=("--lora",))
    assert launch(out, resume=False, kill_on="STEP 14", extra=("--lora",))
    assert launch(out, resume=True, kill_on="PAUSED_IN_SAVE 24", pause_at=24, extra=("--lora",))
    assert_only_complete(out / "checkpoints")
    latest = ck.latest_checkpoint(out / "checkpoints")
    assert latest.name == "checkpoint-20" and (latest / "adapter_model.safetensors").exists()
    assert not (latest / "model.safetensors").exists()  # the adapter only, not the base model
    assert not launch(out, resume=True, extra=("--lora",))
    got, want = (json.loads((d / "result.json").read_text()) for d in (out, ref))
    assert got["resumed_from"].endswith("checkpoint-20")
    assert [v for _, v in got["losses"]] == pytest.approx([v for _, v in want["losses"]], abs=1e-6)
    w_got, w_want = (load_file(d / "final" / "adapter_model.safetensors") for d in (out, ref))
    assert w_got.keys() == w_want.keys() and any("lora_A" in k for k in w_want)
    for k in w_want:
        torch.testing.assert_close(w_got[k], w_want[k], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["optimizer.pt", "model.safetensors"])
def test_a_checkpoint_damaged_in_place_is_named_not_a_traceback(name, tmp_path, reference):
    """Same size, other bytes (the manifest cannot see it): resuming names the checkpoint."""
    from domdistill.config import TrainingConfig
    from domdistill.errors import RunFolderError
    from domdistill.training.sft import train_sft

    ckpts = tmp_path / "checkpoints"
    shutil.copytree(reference / "checkpoints", ckpts)
    latest = ck.latest_checkpoint(ckpts)
    damaged = latest / name
    damaged.write_bytes(bytes(i % 251 for i in range(damaged.stat().st_size)))
    assert ck.is_complete(latest)
    model, tok = load_model_and_tokenizer(reference / "final", dtype="float32")
    with pytest.raises(RunFolderError, match="the checkpoint cannot be read") as err:
        train_sft(model, tok, [("question", "answer")] * 8, TrainingConfig(max_steps=60, save_steps=50),
                  ckpts, resume=True, progress=False)
    assert str(latest) in str(err.value) and "Delete that folder" in str(err.value)


def test_resuming_a_tied_lm_head_warns_of_no_missing_weight(tmp_path):
    """The nano student ties lm_head to the embeddings: a checkpoint holds that weight once,
    and loading it is no "missing keys" warning to frighten a user who resumes."""
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRANSFORMERS_VERBOSITY", None)
    out = tmp_path / "run"
    worker = [sys.executable, str(WORKER), str(out), "--save-steps", "4"]
    subprocess.run([*worker, "--steps", "4"], env=env, check=True, capture_output=True)
    resumed = subprocess.run([*worker, "--steps", "8", "--resume"], env=env, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((out / "result.json").read_text())["resumed_from"].endswith("checkpoint-4")
    assert "missing keys" not in resumed.stderr
