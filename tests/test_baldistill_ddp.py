"""BalDistill under ``accelerate launch`` with two CPU processes (gloo) equals one process at twice
the per-process batch: the same selections per stage, the same ledger rows, the same losses and
metrics; results printed once. With the launcher SIGKILLed during stage 2 its workers stop
with it, and resumed under the launcher the run still equals the one-process run and pays no
teacher call twice.

The budget gives every stage a training set that divides by the global batch (32, 64, 96
examples at batch 8): otherwise accelerate pads the last batch of an epoch on each process with
repeated examples (``even_batches``), and the two runs differ in that one step. The same
equality holds with the real SmolLM2-135M-Instruct student (LoRA, chat template) when LoRA
dropout is off: each process draws dropout masks for its own rows, so with dropout the runs are
alike in distribution but not to the bit.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from procs import free_port, kill_tree
from test_baldistill import ledger_rows

TOLERANCE = 1e-4
CONFIG = {
    "data": {"path": "builtin", "builtin_size": 200, "max_test_per_domain": 3},
    "student": {"model": "nano"},
    "method": {"name": "baldistill_a", "budget": 96, "stages": 3, "score_max_new_tokens": 16,
               "score_candidates": 8},
    "training": {"epochs": 1, "max_seq_len": 80, "learning_rate": 3e-3, "cpu_threads": 1,
                 "deterministic": True, "save_steps": 2},
    "evaluation": {"max_new_tokens": 16, "bootstrap": 10, "batch_size": 8},
    "output": {"tracking": []},
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}


SMOLLM2 = {  # 8 calls a stage: 8, 16, 24 examples; LoRA dropout draws its masks per process
    "data": {"path": "builtin", "builtin_size": 80, "max_test_per_domain": 1},
    "student": {"model": "smollm2-135m-instruct", "lora": True, "lora_r": 4, "lora_dropout": 0.0,
                "dtype": "float32"},
    "method": {"budget": 24, "score_max_new_tokens": 12, "score_candidates": 2},
    "training": {"max_seq_len": 96, "learning_rate": 1e-3},
    "evaluation": {"max_new_tokens": 24, "bootstrap": 0},
}


def write_config(path: Path, batch: int, student: str = "nano") -> Path:
    raw = json.loads(json.dumps(CONFIG))
    if student == "smollm2":
        for section, values in SMOLLM2.items():
            raw[section].update(values)
    raw["training"]["batch_size"] = batch
    path.write_text(yaml.safe_dump(raw))
    return path


def launcher() -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
            "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), "-m", "domdistill.cli"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    return run_one(tmp_path_factory.mktemp("one"), "nano")


def run_one(root: Path, student: str) -> Path:
    proc = subprocess.run([sys.executable, "-m", "domdistill.cli", "run",
                           str(write_config(root / "cfg.yaml", 8, student)), "--out",
                           str(root / "run")], env=ENV, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run"


def assert_same_run(one: Path, two: Path, sizes: tuple[int, ...] = (32, 64, 96)) -> None:
    a, b = (json.loads((r / "state.json").read_text()) for r in (one, two))
    assert [s["train_size"] for s in a["stages"]] == list(sizes)
    assert [s["selected"] for s in b["stages"]] == [s["selected"] for s in a["stages"]]
    assert ledger_rows(two) == ledger_rows(one)
    for sa, sb in zip(a["stages"], b["stages"]):
        assert [s for s, _ in sb["training"]] == [s for s, _ in sa["training"]]
        assert max(abs(x - y) for (_, x), (_, y) in zip(sa["training"], sb["training"])) < TOLERANCE
    ra, rb = (json.loads((r / "results.json").read_text()) for r in (one, two))
    assert rb["budget"] == ra["budget"]
    for d, m in ra["metrics"]["per_domain"].items():
        for k, v in m.items():
            if isinstance(v, float):
                assert rb["metrics"]["per_domain"][d][k] == pytest.approx(v, abs=TOLERANCE), (d, k)
    assert rb["metrics"]["macro"]["accuracy"] == pytest.approx(ra["metrics"]["macro"]["accuracy"],
                                                              abs=TOLERANCE)
    assert (two / "predictions.jsonl").read_text() == (one / "predictions.jsonl").read_text()
    assert set(rb["phase_seconds"]) == {"score", "teacher", "train", "eval"}


@pytest.mark.slow
def test_baldistill_in_two_processes_matches_one(tmp_path, one_process):
    config = write_config(tmp_path / "cfg.yaml", 4)
    proc = subprocess.run([*launcher(), "run", str(config), "--out", str(tmp_path / "run")],
                          env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run folder:") == 1  # the main process reports, once
    assert proc.stderr.count("stage 2/3: training the student") == 1
    # the nano student writes nothing to score: said once, not silently resolved by id order
    assert proc.stderr.count("every candidate scored the same") == 2
    assert_same_run(one_process, tmp_path / "run")


@pytest.mark.slow
def test_baldistill_in_two_processes_killed_in_stage_two_and_resumed_matches_one(tmp_path,
                                                                                 one_process):
    config = write_config(tmp_path / "cfg.yaml", 4)
    run = tmp_path / "run"
    proc = subprocess.Popen([*launcher(), "run", str(config), "--out", str(run)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    try:  # stage 1 recorded and stage 2 past its second checkpoint: SIGKILL the launcher alone
        while not (run / "checkpoints" / "stage-2" / "checkpoint-4").is_dir():
            assert proc.poll() is None and time.time() < deadline, "the run ended before stage 2"
            time.sleep(0.05)
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len(workers) == 2
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        gone, alive = psutil.wait_procs(workers, timeout=30)  # the kernel stops them with it
        assert not alive, [p.pid for p in alive]
    finally:
        kill_tree(proc.pid)
    assert json.loads((run / "state.json").read_text())["stage"] == 1
    calls_before = len(ledger_rows(run))
    resumed = subprocess.run([*launcher(), "run", str(config), "--out", str(run), "--resume"],
                             env=ENV, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert calls_before >= 32 and len(ledger_rows(run)) == 96
    assert_same_run(one_process, run)


@pytest.mark.slow
def test_baldistill_with_smollm2_in_two_processes_matches_one(tmp_path, smollm2):
    (tmp_path / "one").mkdir()
    one = run_one(tmp_path / "one", "smollm2")
    config = write_config(tmp_path / "cfg.yaml", 4, "smollm2")
    proc = subprocess.run([*launcher(), "run", str(config), "--out", str(tmp_path / "two")],
                          env=ENV, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(one, tmp_path / "two", sizes=(8, 16, 24))


@pytest.mark.slow
def test_a_teacher_error_in_the_main_process_stops_every_process_with_one_message(tmp_path):
    raw = json.loads(json.dumps(CONFIG))
    raw["training"]["batch_size"] = 4
    raw["teacher"] = {"kind": "openai", "model": "gpt-x", "base_url": "http://127.0.0.1:9/v1",
                      "api_key_env": "DOMDISTILL_TEST_KEY", "max_outage_s": 2, "retry_base_s": 0.1}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.run([*launcher(), "run", str(tmp_path / "cfg.yaml"), "--out",
                           str(tmp_path / "run")], env={**ENV, "DOMDISTILL_TEST_KEY": "sk-test"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "the teacher has answered nothing for 2 s" in errors[0], proc.stderr
    assert "sk-test" not in proc.stderr + proc.stdout
    assert not (tmp_path / "run" / "state.json").exists()
    con = sqlite3.connect(tmp_path / "run" / "ledger.sqlite")
    assert con.execute("SELECT COUNT(*) FROM calls WHERE charged = 1").fetchone()[0] == 0
    con.close()
