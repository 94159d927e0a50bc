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
              "--main_process_port", "29541"]
    subprocess.run([*launch, str(WORKER), str(two), "--batch", "4", *common], env=env, check=True,
                   capture_output=True)
    a = json.loads((one / "result.json").read_text())["losses"]
    b = json.loads((two / "result.json").read_text())["losses"]
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 21))
    assert max(abs(x - y) for (_, x), (_, y) in zip(a, b)) < TOLERANCE
    latest = ck.latest_checkpoint(two / "checkpoints")
    assert latest is not None and latest.name == "checkpoint-20"
    assert (latest / "rng_state_0.pth").exists() and (latest / "rng_state_1.pth").exists()
