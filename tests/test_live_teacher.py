"""A live LLM teacher: ``transformers serve`` on SmolLM2-135M-Instruct at 127.0.0.1, used as the
``kind: openai`` teacher of a small BalDistill A run that is killed mid-run and resumed.

Slow (several minutes on 2 cores): ``pytest -m slow tests/test_live_teacher.py``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from katan import free_port
from procs import kill_tree, run_until

pytestmark = pytest.mark.slow
DOMDISTILL = Path(sys.executable).with_name("domdistill")
SERVE = Path(sys.executable).with_name("transformers")


class LiveServer:
    """``transformers serve FOLDER`` on a free loopback port; the model's name is the folder."""

    def __init__(self, folder: Path, log: Path):
        self.model = str(folder)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log

    def __enter__(self) -> "LiveServer":
        self._fh = open(self.log, "ab")
        self.proc = subprocess.Popen([str(SERVE), "serve", self.model, "--host", "127.0.0.1",
                                      "--port", str(self.port), "--device", "cpu"],
                                     stdout=self._fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError("transformers serve did not answer /health within 240 s")

    def chat_requests(self) -> int:
        return self.log.read_text(errors="replace").count("POST /v1/chat/completions")

    def __exit__(self, *exc: object) -> None:
        kill_tree(self.proc.pid)
        self._fh.close()


@pytest.fixture(scope="module")
def live_teacher(smollm2: Path, tmp_path_factory: pytest.TempPathFactory):
    with LiveServer(smollm2, tmp_path_factory.mktemp("serve") / "server.log") as server:
        yield server


def _data(shared_data: Path, folder: Path) -> tuple[Path, Path]:
    """A long-tailed R52 slice: earn 8, acq 4, copper 1 (tail: synthesized by the teacher)."""
    want = {"earn": 8, "acq": 4, "copper": 1}
    tests = {"earn": 2, "acq": 2, "copper": 2}
    out = []
    for name, quota in (("r52-train.txt", want), ("r52-test.txt", tests)):
        rows = []
        for line in (shared_data / "reuters-r52" / name).read_text().splitlines():
            label, text = line.split("\t", 1)
            if quota.get(label, 0) > 0:
                quota[label] -= 1
                rows.append(json.dumps({"domain": label, "input": " ".join(text.split()[:40]),
                                        "answer": label}))
        path = folder / name.replace(".txt", ".jsonl")
        path.write_text("\n".join(rows) + "\n")
        out.append(path)
    return out[0], out[1]


def test_baldistill_with_a_live_llm_teacher_is_killed_and_resumed(live_teacher: LiveServer, shared_data: Path,
                                                                   tmp_path: Path) -> None:
    pool, test = _data(shared_data, tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"path": str(pool), "test_path": str(test), "task": "classification"},
        "student": {"model": "smollm2-135m-instruct", "lora": True, "lora_r": 8},
        "teacher": {"kind": "openai", "model": live_teacher.model, "base_url": live_teacher.base_url,
                    "api_key_env": "LIVE_TEACHER_KEY", "max_tokens": 64, "concurrency": 2,
                    "timeout_s": 120},
        "method": {"name": "baldistill_a", "budget": 6, "stages": 2, "score_candidates": 2,
                   "score_max_new_tokens": 24},
        "training": {"epochs": 1, "batch_size": 4, "max_seq_len": 256, "learning_rate": 1e-3},
        "evaluation": {"max_new_tokens": 32, "bootstrap": 0},
        "output": {"dir": str(tmp_path / "run")},
    }))
    env = {**os.environ, "LIVE_TEACHER_KEY": "local-no-key", "DOMDISTILL_PRINT_STEPS": "1"}
    # killed at the first optimizer step of stage 1: the stage's teacher calls are in the ledger
    assert run_until([str(DOMDISTILL), "run", str(config)], env, kill_on="STEP 1", timeout=1200)
    ledger = tmp_path / "run" / "ledger.sqlite"
    before = _rows(ledger)
    assert before and all(r["status"] == "delivered" for r in before)
    sent_before = live_teacher.chat_requests()
    proc = subprocess.run([str(DOMDISTILL), "run", str(config), "--resume"], env=env, text=True,
                          capture_output=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(ledger)
    delivered = [r for r in rows if r["status"] == "delivered"]
    # real usage from the server: every delivered call has its prompt and completion tokens
    assert delivered and all(r["prompt_tokens"] > 20 and r["completion_tokens"] > 0 for r in delivered)
    # nothing sent twice: each call went out once, and the resume sent only the calls it lacked
    assert all(r["sends"] == 1 for r in rows)
    assert live_teacher.chat_requests() - sent_before == len(rows) - len(before)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["budget"]["spent"] == sum(r["charged"] for r in rows) <= 6
    spend = [stage["spend"] for stage in results["history"]]
    dropped = sum(sum(s.get("dropped_by_filter", {}).values()) for s in spend)
    kept = results["history"][-1]["train_size"]
    assert kept + dropped >= 1 and 0 <= results["metrics"]["macro"]["f1"] <= 1
    print(f"live teacher: {len(delivered)} calls, {sum(r['prompt_tokens'] for r in delivered)} prompt + "
          f"{sum(r['completion_tokens'] for r in delivered)} completion tokens, {kept} examples "
          f"kept, {dropped} dropped by the answer filter")


def _rows(ledger: Path) -> list[dict]:
    con = sqlite3.connect(ledger)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM calls")]
    finally:
        con.close()
