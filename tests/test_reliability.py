"""Reliability against a misbehaving teacher server, a full disk, and secrets in whole runs.

The server is the program teacher behind an OpenAI-compatible API on 127.0.0.1
(``domdistill.teachers.program_server``), so every delivered answer can be checked against its
request. The chaos and fault benches (bench/chaos.py, bench/faults.py) run the same checks at
scale; the slow tests here run them small.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest
import yaml

from domdistill.data.builtin import builtin_dataset
from domdistill.teachers import Budget, Ledger, PromptSet, RetryPolicy, Tags, TeacherClient
from domdistill.teachers.openai_api import OpenAITeacher
from domdistill.teachers.program_server import Faults, ProgramServer

REPO = Path(__file__).resolve().parents[1]
KEY_ENV = "DOMDISTILL_RELIABILITY_KEY"
SECRET = "sk-reliability-4c1d2e3f4a5b6c7d8e9f0a1b"


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


def pool(n: int):
    seen, out = set(), []
    for ex in builtin_dataset(size=4 * n, seed=3):
        if (ex.domain, ex.input) not in seen:
            seen.add((ex.domain, ex.input))
            out.append(ex)
    return out[:n]


def ask(base_url: str, ledger: Path, n: int, timeout_s: float = 2.0,
        retry: RetryPolicy = RetryPolicy(10, 0.01, 0.1)):
    exs = pool(n)
    client = TeacherClient(OpenAITeacher("teacher", base_url, KEY_ENV, timeout_s),
                           Ledger(ledger, Budget(calls=n)), PromptSet("builtin"), concurrency=8,
                           retry=retry, max_tokens=64)
    with client:
        return exs, client.rationales(exs, with_answer=True, tags={"stage": 1})


def ledger_state(path: Path) -> dict:
    con = sqlite3.connect(path)
    try:
        status = dict(con.execute("SELECT status, count(*) FROM calls GROUP BY status").fetchall())
        spent = con.execute("SELECT calls FROM spend").fetchone()[0]
        charged = con.execute("SELECT coalesce(sum(charged), 0) FROM calls").fetchone()[0]
        return {"status": status, "spent": spent, "charged": charged,
                "integrity": con.execute("PRAGMA integrity_check").fetchone()[0]}
    finally:
        con.close()


def assert_accounted(exs, batch, ledger: Path) -> dict:
    """Every request delivered (with its own answer) or recorded as failed; none charged twice."""
    state = ledger_state(ledger)
    assert sum(state["status"].values()) == len(exs) and "inflight" not in state["status"]
    assert state["spent"] == state["charged"] <= len(exs)
    for ex, r in zip(exs, batch):
        assert r.status in ("delivered", "failed")
        if r.status == "delivered":
            assert r.correct and r.answer == ex.answer, (ex, r.text)
        else:
            assert r.error and ex.input[:20] in r.error
    return state


FAULTS = {
    "500 at 30%": (Faults(error_rate=0.3, seed=1), {}),
    "500 at 50%": (Faults(error_rate=0.5, seed=2), {"retry": RetryPolicy(14, 0.01, 0.05)}),
    "429 + Retry-After": (Faults(rate_limit_rate=0.3, retry_after_s=0.02, seed=3), {}),
    "slower than the timeout": (Faults(slow_rate=0.2, slow_s=0.8, seed=4), {"timeout_s": 0.25}),
    "malformed JSON body": (Faults(malformed_rate=0.3, seed=5), {}),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_faulty_server_every_request_is_delivered_with_its_answer(name, tmp_path):
    faults, kw = FAULTS[name]
    with ProgramServer(faults=faults, api_key=SECRET) as srv:
        exs, batch = ask(srv.base_url, tmp_path / "ledger.sqlite", 30, **kw)
        counts = dict(srv.counts)
    state = assert_accounted(exs, batch, tmp_path / "ledger.sqlite")
    assert batch.stopped is None and state["status"] == {"delivered": 30} and state["spent"] == 30
    assert sum(counts.values()) - counts["ok"] > 0  # faults were injected and retried
    assert counts["ok"] == 30  # one good answer per request, none asked for twice


def test_empty_replies_are_charged_with_their_usage_and_not_retried_at_temperature_0(tmp_path):
    """A whitespace-only reply was generated (billed): it is delivered, charged, keeps the
    tokens the server reported, is marked unusable, and is not asked for again, neither in the
    batch (greedy decoding would repeat it) nor by a rerun."""
    led = tmp_path / "ledger.sqlite"
    with ProgramServer(faults=Faults(empty_rate=0.3, seed=6), api_key=SECRET) as srv:
        exs, batch = ask(srv.base_url, led, 30)
        counts = dict(srv.counts)
        assert sum(counts.values()) == 30  # one request each: nothing retried
        _, again = ask(srv.base_url, led, 30)
        assert sum(srv.counts.values()) == 30  # the rerun is served from the ledger
    empty = [r for r in batch if r.problem]
    assert len(empty) == counts["empty"] > 3 and all(r.status == "delivered" for r in empty)
    assert len(batch.usable) == 30 - len(empty) and all(r.correct for r in batch.usable)
    assert [r.problem for r in again] == [r.problem for r in batch]
    con = sqlite3.connect(led)
    rows = con.execute("SELECT status, charged, prompt_tokens, billing, problem FROM calls "
                       "WHERE problem IS NOT NULL").fetchall()
    assert len(rows) == len(empty)
    assert all(r[:3] == ("delivered", 1, 10) and r[3] == "billed: delivered"
               and r[4] == "empty reply (whitespace only)" for r in rows)
    assert con.execute("SELECT calls FROM spend").fetchone()[0] == 30


def test_without_retries_failures_are_recorded_and_a_rerun_sends_only_those(tmp_path):
    led = tmp_path / "ledger.sqlite"
    with ProgramServer(faults=Faults(error_rate=0.4, malformed_rate=0.1, seed=7), api_key=SECRET) as srv:
        exs, first = ask(srv.base_url, led, 40, retry=RetryPolicy(0))
        failed = sum(r.status == "failed" for r in first)
        state = assert_accounted(exs, first, led)
        assert 5 < failed < 35 and state["status"]["failed"] == failed
        before = srv.requests
        srv.faults = Faults()  # healthy again
        _, second = ask(srv.base_url, led, 40)
        assert srv.requests - before == failed
    assert all(r.status == "delivered" for r in second)
    assert sum(r.cached for r in second) == 40 - failed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_killed_and_restarted_mid_batch(tmp_path):
    port, log = _free_port(), tmp_path / "requests.jsonl"

    def start() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "domdistill.teachers.program_server",
                                 "--port", str(port), "--api-key", SECRET, "--log", str(log),
                                 "--latency-s", "0.02"], stdout=subprocess.PIPE, text=True)
        assert "serving" in proc.stdout.readline()
        return proc

    servers = [start()]

    def kill_and_restart() -> None:
        while not log.exists() or log.read_text().count("\n") < 20:
            time.sleep(0.01)
        servers[0].send_signal(signal.SIGKILL)
        servers[0].wait()
        time.sleep(0.4)
        servers.append(start())

    t = threading.Thread(target=kill_and_restart)
    t.start()
    try:
        exs, batch = ask(f"http://127.0.0.1:{port}/v1", tmp_path / "ledger.sqlite", 60,
                         retry=RetryPolicy(10, 0.1, 0.5))
    finally:
        t.join()
        for s in servers:
            s.kill()
            s.wait()
    assert len(servers) == 2
    state = assert_accounted(exs, batch, tmp_path / "ledger.sqlite")
    assert state["status"] == {"delivered": 60}


DISK_FULL = r"""
import resource, sys
from pathlib import Path
what, target, limit = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
if what == "state":
    from domdistill.io import atomic_write_json
    atomic_write_json(target, {"stage": 3, "pad": "x" * (2 * limit)})
else:
    from domdistill.teachers import Budget, Ledger, Tags
    with Ledger(target, Budget(calls=100_000)) as led:
        for i in range(100_000):
            led.reserve(f"new{i}", Tags("d", "2", "rationale"))
            led.complete(f"new{i}", "y" * 4000)
"""


def _child(tmp_path: Path, what: str, target: Path, limit: int) -> subprocess.CompletedProcess:
    script = tmp_path / "disk_full.py"
    script.write_text(DISK_FULL)
    return subprocess.run([sys.executable, str(script), what, str(target), str(limit)],
                          capture_output=True, text=True, timeout=120)


def test_disk_full_while_writing_the_state_keeps_the_previous_file(tmp_path):
    from domdistill.io import atomic_write_json

    state = tmp_path / "run" / "state.json"
    atomic_write_json(state, {"stage": 2})
    proc = _child(tmp_path, "state", state, 32 * 1024)
    assert proc.returncode != 0 and "File too large" in proc.stderr
    assert json.loads(state.read_text()) == {"stage": 2}
    assert [p.name for p in state.parent.iterdir()] == ["state.json"]  # no temporary left


def test_disk_full_while_writing_the_ledger_keeps_every_committed_row(tmp_path):
    led = tmp_path / "ledger.sqlite"
    with Ledger(led, Budget(calls=100_000)) as ledger:
        for i in range(30):
            ledger.reserve(f"old{i}", Tags("d", "1", "rationale"))
            ledger.complete(f"old{i}", f"answer {i}")
    proc = _child(tmp_path, "ledger", led, 256 * 1024)
    assert proc.returncode != 0 and "OperationalError" in proc.stderr
    state = ledger_state(led)
    assert state["integrity"] == "ok" and state["spent"] == state["charged"]
    # at most the call whose answer could not be stored stays in flight, charged: a rerun re-sends
    # it once under that charge
    assert state["status"].get("inflight", 0) <= 1
    with Ledger(led) as ledger:
        found = ledger.lookup([f"old{i}" for i in range(30)])
    assert {k: r.response for k, r in found.items()} == {f"old{i}": f"answer {i}" for i in range(30)}


# ---------------------------------------------------------------------------- whole runs
TINY_RUN = {
    "data": {"path": "builtin", "builtin_size": 120, "max_test_per_domain": 1},
    "teacher": {"kind": "openai", "model": "teacher", "api_key_env": KEY_ENV, "timeout_s": 5,
                "retry_base_s": 0.02, "retry_max_s": 0.1, "max_retries": 8, "concurrency": 4},
    "student": {"model": "nano"},
    "method": {"name": "random_ft_cot", "budget": 20, "stages": 1},
    "training": {"epochs": 1, "batch_size": 8, "max_seq_len": 64, "cpu_threads": 1,
                 "deterministic": True},
    "evaluation": {"max_new_tokens": 8, "bootstrap": 0, "perplexity": False},
    "output": {"tracking": []},
}


def domdistill_run(tmp_path: Path, base_url: str, out: Path, env: dict[str, str],
                   *extra: str) -> subprocess.CompletedProcess:
    raw = json.loads(json.dumps(TINY_RUN))
    raw["teacher"]["base_url"] = base_url
    cfg = tmp_path / f"{out.name}.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    return subprocess.run([sys.executable, "-m", "domdistill.cli", "run", str(cfg), "--out",
                           str(out), *extra], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow  # the fast suite: test_run_folders.py::test_secrets_stay_references_*
def test_api_key_never_written_by_whole_runs_ok_or_failing(tmp_path):
    """A successful run, a run stopped by a rejected key (the server echoes it), and the
    traceback of the same failure: the key is in no file, log, output or traceback."""
    wrong = SECRET.replace("4c1d", "0000")
    texts: list[str] = []
    with ProgramServer(faults=Faults(error_rate=0.2, seed=9), api_key=SECRET) as srv:
        ok = domdistill_run(tmp_path, srv.base_url, tmp_path / "ok", {**os.environ, KEY_ENV: SECRET})
        bad = domdistill_run(tmp_path, srv.base_url, tmp_path / "bad", {**os.environ, KEY_ENV: wrong})
        assert srv.counts["unauthorized"] > 0
        from domdistill.config import load_config
        from domdistill.errors import TeacherError
        from domdistill.methods import run_config

        os.environ[KEY_ENV] = wrong
        try:
            run_config(load_config(tmp_path / "bad.yaml"), out=tmp_path / "bad2", progress=False)
        except TeacherError:
            texts.append(traceback.format_exc())
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert bad.returncode == 2 and "HTTP 401" in bad.stderr and "Traceback" not in bad.stderr
    assert f"${KEY_ENV}" in bad.stderr + "".join(texts)  # the echoed key: its variable instead
    assert len(texts) == 1
    texts += [ok.stdout, ok.stderr, bad.stdout, bad.stderr]
    files = [p for run in ("ok", "bad", "bad2") for p in (tmp_path / run).rglob("*") if p.is_file()]
    assert {"ledger.sqlite", "config.yaml", "results.json"} <= {p.name for p in files}
    for secret in (SECRET, wrong):
        for piece in (secret, secret[:12], secret[-8:]):
            assert not any(piece in t for t in texts), piece
            for p in files:
                assert piece.encode() not in p.read_bytes(), p


@pytest.mark.slow
def test_whole_run_stopped_by_a_rate_limit_resumes_to_the_clean_result(tmp_path):
    env = {**os.environ, KEY_ENV: SECRET, "TRANSFORMERS_VERBOSITY": "error"}
    with ProgramServer(api_key=SECRET) as srv:
        clean = domdistill_run(tmp_path, srv.base_url, tmp_path / "clean", env)
    with ProgramServer(faults=Faults(rate_limit_after=8), api_key=SECRET) as srv:
        stopped = domdistill_run(tmp_path, srv.base_url, tmp_path / "limited", env)
    assert clean.returncode == 0 and stopped.returncode == 2
    assert "rate limit did not lift" in " ".join(stopped.stderr.split())
    assert not (tmp_path / "limited" / "results.json").exists()
    with ProgramServer(api_key=SECRET) as srv:
        resumed = domdistill_run(tmp_path, srv.base_url, tmp_path / "limited", env, "--resume")
        assert srv.requests == 20 - 8  # only what was not delivered
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got = json.loads((tmp_path / "limited" / "results.json").read_text())
    want = json.loads((tmp_path / "clean" / "results.json").read_text())
    assert got["metrics"] == want["metrics"] and got["budget"] == want["budget"]


@pytest.mark.slow
def test_chaos_bench_small(tmp_path):
    proc = subprocess.run([sys.executable, "bench/chaos.py", "--kills", "3", "--work", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("SUMMARY "))
    for method in ("baldistill", "ddk"):
        s = summary[method]
        assert s["kills"] == 3 and s["survived"] == 3
        assert s["mismatches"] == 0 and s["double_charged"] == 0 and s["corrupt"] == 0
