"""Teacher failures through the real CLI and a real OpenAI-compatible server on 127.0.0.1.

The charging rule (``teachers/ledger.py``): delivered answers are charged; requests that never
reached the server or that it rejected before generating are not; requests whose outcome is
unknown (read timeout, connection lost after sending) are charged as possibly billed. A run
never exits 0 after failures without saying so, and a teacher that stays down, or rejects every
request the same way, stops the run quickly with a message that says what to fix.
"""

from __future__ import annotations

import json
import re
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from domdistill.teachers.program_server import Faults, ProgramServer, free_port, spawn

REPO = Path(__file__).resolve().parents[1]
KEY_ENV = "DOMDISTILL_FAILURES_KEY"
SECRET = "sk-failures-9f8e7d6c5b4a39281706f5e4"
RUN = {
    "data": {"path": "builtin", "builtin_size": 200, "max_test_per_domain": 3},
    "teacher": {"kind": "openai", "model": "teacher", "api_key_env": KEY_ENV, "timeout_s": 10,
                "retry_base_s": 0.05, "retry_max_s": 0.5, "concurrency": 4, "max_outage_s": 3},
    "student": {"model": "nano"},
    "method": {"name": "baldistill_a", "budget": 98, "stages": 3, "score_max_new_tokens": 16,
               "score_candidates": 8},
    "training": {"epochs": 1, "batch_size": 16, "max_seq_len": 80, "learning_rate": 3e-3,
                 "cpu_threads": 1, "deterministic": True},
    "evaluation": {"max_new_tokens": 16, "bootstrap": 10},
    "output": {"tracking": []},
}
ENV = {**os.environ, KEY_ENV: SECRET, "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}


def cli(tmp_path: Path, base_url: str, out: str, *extra: str, teacher: dict | None = None,
        method: dict | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    raw = json.loads(json.dumps(RUN))
    raw["teacher"].update(base_url=base_url, **(teacher or {}))
    raw["method"].update(method or {})
    cfg = tmp_path / f"{out}.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    return subprocess.run([sys.executable, "-m", "domdistill.cli", "run", str(cfg), "--out",
                           str(tmp_path / out), *extra], cwd=tmp_path, env=env or ENV,
                          capture_output=True, text=True, timeout=300)


def ledger(run: Path) -> dict:
    con = sqlite3.connect(run / "ledger.sqlite")
    try:
        rows = [dict(zip(("status", "charged", "billing", "problem", "sends"), r)) for r in con.execute(
            "SELECT status, charged, billing, problem, sends FROM calls")]
        spent = con.execute("SELECT calls FROM spend").fetchone()[0]
    finally:
        con.close()
    by = lambda f: [r for r in rows if f(r)]  # noqa: E731
    return {"rows": rows, "spent": spent, "charged": sum(r["charged"] for r in rows),
            "delivered": len(by(lambda r: r["status"] == "delivered")),
            "failed": len(by(lambda r: r["status"] == "failed")),
            "possibly_billed": len(by(lambda r: r["status"] == "failed" and r["charged"])),
            "inflight": len(by(lambda r: r["status"] == "inflight"))}


def error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict:
    """The reference: the same run against a healthy server."""
    tmp = tmp_path_factory.mktemp("clean")
    with ProgramServer(api_key=SECRET) as srv:
        proc = cli(tmp, srv.base_url, "clean")
        requests = srv.requests
    # The toy student answers nothing parsable (an output warning); no warning may be about the teacher.
    teacher_warnings = [ln for ln in proc.stderr.split("warning:")[1:] if "teacher" in ln]
    assert proc.returncode == 0 and not teacher_warnings, proc.stderr[-3000:]
    return {"results": json.loads((tmp / "clean" / "results.json").read_text()),
            "requests": requests}


@pytest.mark.parametrize("budget", [28, 840])
def test_closed_port_stops_within_the_outage_window_at_any_budget_and_charges_nothing(tmp_path, budget):
    port = free_port()  # nothing listens: every connection is refused
    start = time.monotonic()
    proc = cli(tmp_path, f"http://127.0.0.1:{port}/v1", "closed",
               method={"budget": budget, "stages": 1} if budget > 98 else {"budget": budget})
    seconds = time.monotonic() - start
    assert proc.returncode == 2
    line = error_line(proc)
    assert f"127.0.0.1:{port}/v1/chat/completions" in line and "max_outage_s = 3" in line
    assert "--resume" in line and "ConnectError" in line
    assert seconds < 3 + 15, seconds  # the outage window plus start-up, whatever the budget
    led = ledger(tmp_path / "closed")
    assert led["spent"] == led["charged"] == 0 and led["delivered"] == 0 and led["failed"] > 0
    assert all(r["billing"].startswith("not billed") for r in led["rows"])


def test_server_killed_and_left_down_then_resumed_loses_nothing_and_pays_nothing_twice(tmp_path, clean):
    """Killed after stage 1 and left down: exit 2 within the outage window, refused requests not
    charged, the ones cut off mid-request possibly billed; after the server is back, --resume
    sends only what is missing and ends with the clean run's metrics."""
    port, log = free_port(), tmp_path / "requests.jsonl"
    server = spawn(port, "--api-key", SECRET, "--latency-s", "0.02", log=log)

    def kill_after(n: int) -> None:
        while not log.exists() or log.read_text().count("\n") < n:
            time.sleep(0.005)
        server.kill()

    stage1 = clean["results"]["history"][0]["spend"]["real"] + 20  # a few calls into stage 2
    killer = threading.Thread(target=kill_after, args=(stage1,))
    killer.start()
    first = cli(tmp_path, f"http://127.0.0.1:{port}/v1", "run")
    killer.join()
    server.wait()
    assert first.returncode == 2, first.stderr[-3000:]
    assert "answered nothing" in error_line(first)
    assert not (tmp_path / "run" / "results.json").exists()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["stage"] == 1  # stage 2 was not recorded as done
    down = ledger(tmp_path / "run")
    assert down["spent"] == down["charged"] == down["delivered"] + down["possibly_billed"]
    refused = [r for r in down["rows"] if "ConnectError" in (r["billing"] or "")]
    assert refused and not any(r["charged"] for r in refused)
    assert all(r["billing"].startswith("possibly billed") for r in down["rows"]
               if r["status"] == "failed" and r["charged"])

    sent_before = log.read_text().count("\n")
    server = spawn(port, "--api-key", SECRET, log=log)
    start = time.monotonic()
    try:
        again = cli(tmp_path, f"http://127.0.0.1:{port}/v1", "run", "--resume")
    finally:
        server.kill()
        server.wait()
    resume_seconds = time.monotonic() - start
    assert again.returncode == 0, again.stderr[-3000:]
    got = json.loads((tmp_path / "run" / "results.json").read_text())
    assert got["metrics"] == clean["results"]["metrics"]
    assert got["budget"]["spent"] == clean["results"]["budget"]["spent"]
    assert got["budget"]["failed"] == 0 and got["warnings"] == clean["results"]["warnings"]
    after = ledger(tmp_path / "run")
    assert after["spent"] == after["charged"] == after["delivered"] == got["budget"]["spent"]
    # every request the server saw beyond the clean run's count was one it had not answered
    resent = log.read_text().count("\n") - sent_before
    assert resent == clean["requests"] - down["delivered"]
    # wall time covers both invocations: stage 1 of the first plus the whole resume
    assert got["wall_seconds"] > state["elapsed"] > 0
    resumed_stages = sum(sum(h["seconds"].values()) for h in got["history"][1:])
    assert state["elapsed"] + resumed_stages <= got["wall_seconds"] <= state["elapsed"] + resume_seconds
    # the ledger command's header and its tables count the same things
    report = subprocess.run([sys.executable, "-m", "domdistill.cli", "ledger", str(tmp_path / "run"),
                             "--json"], capture_output=True, text=True, env=ENV, check=True)
    rep = json.loads(report.stdout)
    assert rep["spent"]["calls"] == rep["totals"]["charged"] == sum(
        v["charged"] for v in rep["by_status"].values()) == sum(v["charged"] for v in rep["by_billing"].values())
    assert rep["spent"]["tokens"] == rep["totals"]["tokens"]


def test_wrong_model_stops_after_a_few_requests_with_the_servers_reason(tmp_path):
    with ProgramServer(api_key=SECRET, model="/models/teacher", strict_model=True) as srv:
        proc = cli(tmp_path, srv.base_url, "wrong-model")
        sent = srv.requests
    assert proc.returncode == 2
    line = error_line(proc)
    assert "HTTP 400" in line and "Server is pinned to model '/models/teacher'" in line
    assert "teacher.model" in line and srv.base_url in line
    assert sent <= 4 + 3  # the first concurrency window at most, not the whole stage
    led = ledger(tmp_path / "wrong-model")
    assert led["spent"] == 0 and led["delivered"] == 0


def test_base_url_without_v1_is_named_in_the_message(tmp_path):
    with ProgramServer(api_key=SECRET) as srv:
        proc = cli(tmp_path, srv.base_url.removesuffix("/v1"), "no-v1")
        sent = srv.requests
    assert proc.returncode == 2
    line = error_line(proc)
    assert "HTTP 404" in line and "no route /chat/completions" in line and "/v1" in line
    assert sent <= 4 + 3 and ledger(tmp_path / "no-v1")["spent"] == 0


def test_timeouts_shorter_than_the_generation_are_possibly_billed_and_resent_under_their_charge(tmp_path, clean):
    with ProgramServer(faults=Faults(slow_rate=1.0, slow_s=1.0), api_key=SECRET) as srv:
        slow = cli(tmp_path, srv.base_url, "slow", teacher={"timeout_s": 0.3})
    assert slow.returncode == 2
    assert "within teacher.timeout_s = 0.3 s" in error_line(slow)
    led = ledger(tmp_path / "slow")
    assert led["possibly_billed"] > 0 and led["delivered"] == 0
    assert led["spent"] == led["charged"] == led["possibly_billed"]
    assert all("timed out" in r["billing"] for r in led["rows"] if r["charged"])
    with ProgramServer(api_key=SECRET) as srv:
        again = cli(tmp_path, srv.base_url, "slow", "--resume", teacher={"timeout_s": 5})
    assert again.returncode == 0, again.stderr[-3000:]
    after = ledger(tmp_path / "slow")
    # the possibly billed requests were sent again under the charge they had: nothing twice
    assert after["spent"] == after["charged"] == after["delivered"] == clean["results"]["budget"]["spent"]
    assert json.loads((tmp_path / "slow" / "results.json").read_text())["metrics"] == clean["results"]["metrics"]


def test_failures_above_the_threshold_stop_the_stage_and_resume_sends_only_them(tmp_path, clean):
    with ProgramServer(faults=Faults(error_rate=0.5, seed=3), api_key=SECRET) as srv:
        bad = cli(tmp_path, srv.base_url, "flaky", teacher={"max_retries": 0})
    assert bad.returncode == 2
    line = error_line(bad)
    assert "stage 1:" in line and "teacher.max_failure_rate = 10%" in line and "--resume" in line
    led = ledger(tmp_path / "flaky")
    assert not (tmp_path / "flaky" / "state.json").exists()  # stage 1 was not recorded as done
    assert led["charged"] == led["delivered"] and led["failed"] > 0  # 500s were not charged
    with ProgramServer(api_key=SECRET) as srv:
        again = cli(tmp_path, srv.base_url, "flaky", "--resume", teacher={"max_retries": 0})
        sent = srv.requests
    assert again.returncode == 0, again.stderr[-3000:]
    assert sent == clean["requests"] - led["delivered"]
    assert json.loads((tmp_path / "flaky" / "results.json").read_text())["metrics"] == clean["results"]["metrics"]


def test_failures_below_the_threshold_are_reported_not_passed_over(tmp_path):
    with ProgramServer(faults=Faults(error_rate=0.15, seed=5), api_key=SECRET) as srv:
        proc = cli(tmp_path, srv.base_url, "some", teacher={"max_retries": 0, "max_failure_rate": 0.5})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "some" / "results.json").read_text())
    failed = results["budget"]["failed"]
    assert failed == ledger(tmp_path / "some")["failed"] > 0
    assert f"warning: {failed} teacher call(s) failed" in " ".join(proc.stderr.split())
    assert f"({failed} failed)" in proc.stdout  # beside the calls spent in the results table
    per_stage = re.findall(r"stage \d+/\d+: (\d+) teacher request\(s\) failed", proc.stderr)
    assert sum(map(int, per_stage)) == failed  # said in the stage it happened, too
    assert any("failed" in w for w in results["warnings"])
    report = subprocess.run([sys.executable, "-m", "domdistill.cli", "report", str(tmp_path / "some"),
                             "--out", str(tmp_path / "report")], capture_output=True, text=True,
                            env=ENV)
    assert report.returncode == 0, report.stderr
    md = (tmp_path / "report" / "report.md").read_text()
    assert "failed" in md and str(failed) in md


def test_unusable_replies_are_charged_and_recorded_with_their_reason(tmp_path):
    """Garbled (no answer line) and whitespace-only replies: delivered and charged with their
    usage, marked in the ledger with why they were not used, never retried or re-sent."""
    with ProgramServer(faults=Faults(garbled_rate=0.3, empty_rate=0.1, seed=11), api_key=SECRET) as srv:
        proc = cli(tmp_path, srv.base_url, "garbled")
        counts = dict(srv.counts)
    assert proc.returncode == 0, proc.stderr[-3000:]
    led = ledger(tmp_path / "garbled")
    assert led["failed"] == 0 and led["spent"] == led["charged"] == led["delivered"] == srv.requests
    problems = [r["problem"] for r in led["rows"] if r["problem"]]
    assert sum(p.startswith("unparseable synthesis reply") for p in problems) > 0
    assert sum(p == "empty reply (whitespace only)" for p in problems) == counts["empty"] > 0
    results = json.loads((tmp_path / "garbled" / "results.json").read_text())
    assert results["budget"]["unusable"] == len(problems)
    assert "could not be used" in " ".join(proc.stderr.split())


def test_requested_logprobs_that_do_not_come_back_are_a_warning(tmp_path):
    with ProgramServer(api_key=SECRET) as srv:
        proc = cli(tmp_path, srv.base_url, "logprobs", teacher={"top_logprobs": 5},
                   method={"budget": 28, "stages": 1})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "teacher.top_logprobs = 5 was set but 28 replies came without log-probabilities" in \
        " ".join(proc.stderr.split())


def test_missing_key_variable_is_refused_before_the_run_folder_exists(tmp_path):
    env = {k: v for k, v in ENV.items() if k != KEY_ENV}
    proc = cli(tmp_path, "http://127.0.0.1:9/v1", "nokey", env=env)
    assert proc.returncode == 2 and f"${KEY_ENV}" in error_line(proc)
    assert not (tmp_path / "nokey").exists()


def test_connection_lost_after_the_request_was_sent_is_possibly_billed(tmp_path):
    """A server that reads the whole request and hangs up without answering."""
    import asyncio

    from domdistill.teachers.base import CallError, TeacherRequest
    from domdistill.teachers.openai_api import OpenAITeacher

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)

    def hang_up() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    os.environ[KEY_ENV] = SECRET
    teacher = OpenAITeacher("teacher", f"http://127.0.0.1:{sock.getsockname()[1]}/v1", KEY_ENV, 5)
    req = TeacherRequest("rationale", "d", (("user", "What is 2 + 3?"),), input="2 + 3")

    async def call() -> CallError:
        try:
            await teacher.complete([req])
        except CallError as e:
            return e
        finally:
            await teacher.aclose()
        raise AssertionError("expected a CallError")

    err = asyncio.run(call())
    sock.close()
    assert err.maybe_billed and err.retryable and err.outage
    assert err.billing.startswith("possibly billed") and "lost after the request was sent" in str(err)
