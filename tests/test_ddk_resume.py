"""SIGKILL a DDK run between interval updates, resume, and end exactly where an uninterrupted run
ends: the same domain weights at every boundary, the same losses and the same student."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _ddk_worker import make_teacher
from procs import run_until
from domdistill.training import checkpoints as ck

WORKER = Path(__file__).with_name("_ddk_worker.py")


def launch(teacher: Path, out: Path, resume: bool, kill_on: str | None = None) -> bool:
    """Run the worker; SIGKILL it when a stderr line starts with ``kill_on``. True if killed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DOMDISTILL_PRINT_STEPS": "1"}
    cmd = [sys.executable, str(WORKER), str(teacher), str(out)] + (["--resume"] if resume else [])
    return run_until(cmd, env, kill_on)


@pytest.mark.slow  # DDK resume in the fast suite: test_ddk.py::test_resume_after_training_*
def test_sigkill_between_intervals_resumes_to_the_same_weights_and_loss(tmp_path):
    teacher = make_teacher(tmp_path / "teachers")
    ref, run = tmp_path / "ref", tmp_path / "crashed"
    assert not launch(teacher, ref, resume=False)
    # killed at step 12: checkpoint-8 is the latest (interval 1 half done, boundary 10 passed)
    assert launch(teacher, run, resume=False, kill_on="STEP 12")
    latest = ck.latest_checkpoint(run / "run" / "checkpoints")
    assert latest is not None and latest.name == "checkpoint-8"
    state = ck.read_method_state(latest)
    assert [h["step"] for h in state["ddk"]["history"]] == [0, 5]
    assert state["plan"]["interval"] == 1 and len(state["plan"]["slots"]) == 5 * 8
    assert not (run / "run" / "results.json").exists()
    assert not launch(teacher, run, resume=True)

    got = json.loads((run / "run" / "results.json").read_text())
    want = json.loads((ref / "run" / "results.json").read_text())
    assert [h["step"] for h in got["history"]] == [0, 5, 10, 15, 20, 25]
    for g, w in zip(got["history"], want["history"]):
        assert g["weights"] == pytest.approx(w["weights"], abs=1e-9)
        assert g["student_ppl"] == pytest.approx(w["student_ppl"], rel=1e-6)
    # the weights moved: resuming with stale or reset weights would not match
    assert got["history"][-1]["weights"] != pytest.approx(got["history"][0]["weights"], abs=1e-3)
    g_loss, w_loss = got["training"]["losses"], want["training"]["losses"]
    assert [e["step"] for e in g_loss] == list(range(1, 26))
    assert g_loss[-1]["loss"] == pytest.approx(w_loss[-1]["loss"], abs=1e-6)
    assert [e["loss"] for e in g_loss] == pytest.approx([e["loss"] for e in w_loss], abs=1e-6)
    assert got["training"]["tokens"] == want["training"]["tokens"]
    a = load_file(run / "run" / "student" / "model.safetensors")
    b = load_file(ref / "run" / "student" / "model.safetensors")
    for k in b:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
