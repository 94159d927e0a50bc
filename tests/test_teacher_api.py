"""The OpenAI-compatible back-end and the client against a real server (llm-katan echo, loopback):
retries, a rate limit that does not lift, SIGKILL mid-batch, and the API key never written."""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
from katan import KatanServer

from domdistill.config import RunConfig, save_config
from domdistill.data.example import DomainExample
from domdistill.errors import TeacherError
from domdistill.teachers import Budget, Ledger, PromptSet, RetryPolicy, TeacherClient
from domdistill.teachers.openai_api import OpenAITeacher

KEY_ENV = "DOMDISTILL_TEST_TEACHER_KEY"
SECRET = "sk-domdistill-test-9f8e7d6c5b4a3210fedcba98"
FAST = RetryPolicy(max_retries=6, base_s=0.01, max_s=0.1)


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


def examples(n: int, prefix: str = "doc") -> list[DomainExample]:
    return [DomainExample(f"{prefix}{i}", f"d{i % 4}", f"{prefix} number {i} about topic {i % 4}",
                          f"d{i % 4}") for i in range(n)]


def client_for(server: KatanServer, ledger: Path, budget: int | None = None, concurrency: int = 8,
               retry: RetryPolicy = FAST) -> TeacherClient:
    return TeacherClient(OpenAITeacher(server.model, server.base_url, KEY_ENV),
                         Ledger(ledger, Budget(calls=budget)),
                         PromptSet(task="classification", labels=("d0", "d1", "d2", "d3")),
                         concurrency=concurrency, retry=retry, max_tokens=64)


def rows(ledger: Path) -> list[tuple]:
    con = sqlite3.connect(ledger)
    out = con.execute("SELECT key, status, charged, sends, response, error FROM calls").fetchall()
    con.close()
    return out


def test_server_errors_are_retried_and_every_answer_matches_its_request(tmp_path: Path) -> None:
    exs = examples(100)
    with KatanServer(tmp_path / "server.log", "--error-rate", "0.3", "--latency-ms", "20") as srv:
        # 10 retries: a request fails for good with probability 0.3**11, about 2e-6
        with client_for(srv, tmp_path / "ledger.sqlite", budget=100,
                        retry=RetryPolicy(10, 0.01, 0.1)) as client:
            batch = client.rationales(exs, with_answer=True, tags={"stage": 1})
            spent = client.ledger.spent()["calls"]
        sent = srv.chat_requests()
    assert batch.stopped is None
    assert [r.status for r in batch] == ["delivered"] * 100
    for ex, r in zip(exs, batch):  # the echo shows the prompt: each answer belongs to its request
        assert ex.input in r.text and f"The answer is: {ex.answer}" in r.text
        assert r.answer == ex.answer and r.correct
    assert sent > 100  # HTTP 500s were retried
    assert spent == 100 and len(rows(tmp_path / "ledger.sqlite")) == 100


def test_failures_after_retries_are_dead_letters_and_a_rerun_sends_only_those(tmp_path: Path) -> None:
    exs = examples(60)
    led = tmp_path / "ledger.sqlite"
    no_retry = RetryPolicy(max_retries=0)
    with KatanServer(tmp_path / "server.log", "--error-rate", "0.5") as srv:
        with client_for(srv, led, retry=no_retry) as client:
            first = client.rationales(exs)
        failed = [r for r in first if r.status == "failed"]
        assert 5 < len(failed) < 55 and all("HTTP 500" in r.error and r.text is None for r in failed)
        stored = {s for _, s, *_ in rows(led)}
        assert len(rows(led)) == 60 and stored == {"delivered", "failed"}  # none lost
        assert sum(c for _, _, c, *_ in rows(led)) == 60 - len(failed)  # refused calls not charged
        before = srv.chat_requests()
        with client_for(srv, led, retry=no_retry) as client:
            second = client.rationales(exs)
        assert srv.chat_requests() - before == len(failed)
    assert sum(r.cached for r in second) == 60 - len(failed)


def test_rate_limit_that_does_not_lift_stops_and_a_rerun_sends_only_the_missing(tmp_path: Path) -> None:
    exs = examples(80)
    led = tmp_path / "ledger.sqlite"
    with KatanServer(tmp_path / "limited.log", "--rate-limit-after", "30", "--latency-ms", "10") as srv:
        with client_for(srv, led, budget=80, retry=RetryPolicy(2, 0.01, 0.05)) as client:
            batch = client.rationales(exs)
    assert batch.stopped and "rate limit did not lift" in batch.stopped
    assert "run the same command with --resume" in batch.stopped
    delivered = [r for r in batch if r.status == "delivered"]
    assert len(delivered) == 30
    assert all(r.status == "failed" and r.error for r in batch if r.status != "delivered")
    with pytest.raises(TeacherError, match="rate limit did not lift"):
        batch.raise_if_stopped()
    stored = rows(led)
    assert sum(s == "delivered" for _, s, *_ in stored) == 30 and len(stored) == 80
    assert sum(c for _, _, c, *_ in stored) == 30  # 429s were refused, not billed
    with KatanServer(tmp_path / "fresh.log") as fresh:
        with client_for(fresh, led, budget=80) as client:
            again = client.rationales(exs)
        assert fresh.chat_requests() == 50
    assert again.stopped is None and all(r.status == "delivered" for r in again)
    assert [r.cached for r in again] == [r.status == "delivered" for r in batch]
    assert [r.text for r in again if r.cached] == [r.text for r in delivered]


WORKER = r"""
import sys
sys.path.insert(0, {tests!r})
from test_teacher_api import client_for, examples
from katan import KatanServer
class Srv: model = "teacher"; base_url = sys.argv[1]
exs = examples(120) + examples(120)[:30]  # 30 duplicates: one call per distinct request
with client_for(Srv, sys.argv[2], budget=120, concurrency=8) as client:
    batch = client.rationales(exs, tags={{"stage": 1}})
print("DONE", sum(r.status == "delivered" for r in batch), batch.stopped)
"""


def test_sigkill_mid_batch_then_rerun_delivers_each_request_once_within_budget(tmp_path: Path) -> None:
    led = tmp_path / "run" / "ledger.sqlite"
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent)))
    with KatanServer(tmp_path / "server.log", "--latency-ms", "300") as srv:
        cmd = [sys.executable, str(script), srv.base_url, str(led)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        delivered: dict[str, str] = {}
        while time.monotonic() < deadline and len(delivered) < 24:
            time.sleep(0.1)
            if led.exists():
                try:
                    delivered = {k: r for k, s, _, _, r, _ in rows(led) if s == "delivered"}
                except sqlite3.OperationalError:
                    continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        snapshot = rows(led)
        at_kill = {k: r for k, s, _, _, r, _ in snapshot if s == "delivered"}
        inflight = sum(s == "inflight" for _, s, *_ in snapshot)
        assert 24 <= len(at_kill) < 120 and inflight > 0
        assert sum(c for _, _, c, *_ in snapshot) <= 120
        sent_before = srv.chat_requests()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert "DONE 150 None" in out.stdout, out.stdout + out.stderr
        sent_after = srv.chat_requests()
    final = rows(led)
    assert len(final) == 120 and all(s == "delivered" for _, s, *_ in final)
    by_key = {k: (sends, r) for k, _, _, sends, r, _ in final}
    for key, response in at_kill.items():  # never sent again once recorded
        assert by_key[key] == (1, response)
    assert sent_after - sent_before <= 120 - len(at_kill)  # only undelivered requests re-sent
    con = sqlite3.connect(led)
    assert con.execute("SELECT calls FROM spend").fetchone()[0] == 120  # in-flight re-sent under its charge
    con.close()


def test_api_key_never_reaches_files_logs_output_or_errors(tmp_path: Path, capfd: pytest.CaptureFixture,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    handler = logging.FileHandler(run / "logs" / "teacher.log")
    root = logging.getLogger()
    root.addHandler(handler)
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    try:
        with KatanServer(tmp_path / "server.log", "--validate-keys", "--api-keys",
                         f"openai={SECRET}") as srv:
            cfg = RunConfig.model_validate({"teacher": {"kind": "openai", "model": "teacher",
                                                        "base_url": srv.base_url, "api_key_env": KEY_ENV}})
            save_config(cfg, run / "config.yaml")
            with client_for(srv, run / "ledger.sqlite") as client:
                ok = client.rationales(examples(5))
                print(ok, [repr(client.teacher)])
            assert all(r.status == "delivered" for r in ok)
            wrong = SECRET.replace("9f8e", "0000")  # a rejected key is a secret too
            import os
            os.environ[KEY_ENV] = wrong
            with client_for(srv, run / "ledger.sqlite") as client:
                bad = client.rationales(examples(5, prefix="other"))
            assert bad.stopped and "HTTP 401" in bad.stopped
            assert all(r.status == "failed" for r in bad)
            try:
                bad.raise_if_stopped()
            except TeacherError:
                texts.append(traceback.format_exc())
            print(bad.stopped, [r.error for r in bad])
            cli = subprocess.run([str(Path(sys.executable).with_name("domdistill")), "ledger", str(run)],
                                 capture_output=True, text=True, timeout=60)
            texts += [cli.stdout, cli.stderr, json.dumps([r.error for r in bad])]
    finally:
        root.removeHandler(handler)
        handler.close()
    captured = capfd.readouterr()
    texts += [captured.out, captured.err, caplog.text]
    files = [p for p in run.rglob("*") if p.is_file()]
    assert {"config.yaml", "ledger.sqlite", "teacher.log"} <= {p.name for p in files}
    for secret in (SECRET, wrong):
        for piece in (secret, secret[:12], secret[-8:]):
            assert not any(piece in t for t in texts)
            for p in files:
                assert piece.encode() not in p.read_bytes(), p
    assert f"${KEY_ENV}" in "".join(texts)  # the server echoed the rejected key: its variable instead
