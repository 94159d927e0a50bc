"""Two CPU processes (gloo DDP via ``accelerate launch``) give the single-process loss curve at the
same global batch.

On a machine without GPUs, ``accelerate launch --multi_gpu --num_processes 2`` starts two processes
that train over gloo (``--cpu`` makes accelerate 1.x start a single process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from domdistill.training import checkpoints as ck
from procs import free_port, run_until

WORKER = Path(__file__).with_name("_sft_worker.py")
TOLERANCE = 1e-4  # absolute, per logged step (measured: below 1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["sft", "kd"])
def test_two_processes_match_one(tmp_path, loss):
    """Supervised fine-tuning, and the chunked CE + KD loss of KD/DDK (whose student forward
    must go through the DDP wrapper for the gradients to be averaged)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--steps", "20", "--save-steps", "10"] + (["--kd"] if loss == "kd" else [])
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, str(WORKER), str(one), "--batch", "8", *common], env=env, check=True,
                   capture_output=True)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port())]
    subprocess.run([*launch, str(WORKER), str(two), "--batch", "4", *common], env=env, check=True,
                   capture_output=True)
    a = json.loads((one / "result.json").read_text())["losses"]
    b = json.loads((two / "result.json").read_text())["losses"]
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 21))
    assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) < TOLERANCE
    latest = ck.latest_checkpoint(two / "checkpoints")
    assert latest is not None and latest.name == "checkpoint-20"
    assert (latest / "rng_state_0.pth").exists() and (latest / "rng_state_1.pth").exists()


DDK_WORKER = Path(__file__).with_name("_ddk_worker.py")
DDK_STEPS = 12


def _launcher() -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port())]


@pytest.fixture(scope="module")
def ddk_one(tmp_path_factory) -> tuple[Path, dict]:
    """The teacher, and the results of a one-process DDK run at batch 8."""
    sys.path.insert(0, str(DDK_WORKER.parent))
    from _ddk_worker import make_teacher

    root = tmp_path_factory.mktemp("ddk_one")
    teacher = make_teacher(root / "teacher")
    subprocess.run([sys.executable, str(DDK_WORKER), str(teacher), str(root / "one"), "--steps",
                    str(DDK_STEPS), "--batch", "8"], env={**os.environ, "OMP_NUM_THREADS": "1"},
                   check=True, capture_output=True)
    return teacher, json.loads((root / "one" / "run" / "results.json").read_text())


def _two_process_config(teacher: Path, tmp_path: Path) -> Path:
    from _ddk_worker import ddk_config
    from domdistill.config import save_config

    config = tmp_path / "two.yaml"  # the two-process runs go through the CLI
    save_config(ddk_config(teacher, tmp_path / "two" / "run", steps=DDK_STEPS, batch=4), config)
    return config


def _assert_same_run(one: dict, two: dict) -> None:
    assert [h["step"] for h in two["history"]] == [h["step"] for h in one["history"]] == [0, 5, 10, 12]
    for a, b in zip(one["history"], two["history"]):
        assert b["tokens"] == a["tokens"]  # the same sequences, counted over both processes
        for d in a["weights"]:
            assert b["weights"][d] == pytest.approx(a["weights"][d], rel=1e-4)
            assert b["student_ppl"][d] == pytest.approx(a["student_ppl"][d], rel=1e-4)
    assert [e["step"] for e in two["training"]["losses"]] == [e["step"] for e in one["training"]["losses"]]
    for a, b in zip(one["training"]["losses"], two["training"]["losses"]):
        assert b["loss"] == pytest.approx(a["loss"], abs=TOLERANCE)
    assert two["metrics"]["macro"]["ppl_ratio"] == pytest.approx(one["metrics"]["macro"]["ppl_ratio"], rel=1e-4)


@pytest.mark.slow
def test_ddk_run_in_two_processes_matches_one(tmp_path, ddk_one):
    """A whole DDK run (teacher perplexities, interval re-weighting, checkpoints, results) under
    ``accelerate launch`` with two processes at half the batch each equals the one-process run:
    the main process measures and writes, every process trains its half of each step."""
    teacher, one = ddk_one
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*_launcher(), "-m", "domdistill.cli", "run",
                           str(_two_process_config(teacher, tmp_path))], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("per-domain perplexity") == 1  # the main process reports, once
    run = tmp_path / "two" / "run"
    _assert_same_run(one, json.loads((run / "results.json").read_text()))
    assert ck.latest_checkpoint(run / "checkpoints").name == "checkpoint-12"
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".json") == [
        "ddk_state.json", "results.json", "run.json", "teacher_ppl.json", "validation.json"]


@pytest.mark.slow
def test_ddk_in_two_processes_killed_and_resumed_matches_one(tmp_path, ddk_one):
    """SIGKILL to the launcher and both processes at step 7 (checkpoint-4 is the latest), then
    ``domdistill run --resume`` under the launcher: the same run as one uninterrupted process."""
    teacher, one = ddk_one
    config = _two_process_config(teacher, tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DOMDISTILL_PRINT_STEPS": "1"}
    assert run_until([*_launcher(), "-m", "domdistill.cli", "run", str(config)], env,
                     kill_on="STEP 7")
    run = tmp_path / "two" / "run"
    assert ck.latest_checkpoint(run / "checkpoints").name == "checkpoint-4"
    assert not (run / "results.json").exists()
    resumed = subprocess.run([*_launcher(), "-m", "domdistill.cli", "run", str(config), "--resume"],
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(one, json.loads((run / "results.json").read_text()))
