"""Fault-injection bench: the teacher client and whole runs against a misbehaving teacher server.

The server is the program teacher behind an OpenAI-compatible API on 127.0.0.1
(``domdistill.teachers.program_server``), so every delivered answer can be checked against its
request. Faults: HTTP 500 at 10-50%, 429 with Retry-After, answers slower than the client's
timeout, malformed JSON bodies, empty completions, a rate limit that does not lift, the server
killed with SIGKILL and restarted mid-batch, and a full disk (``RLIMIT_FSIZE``) while the
ledger, a checkpoint or the state file is written. For each: distinct requests, server attempts,
delivered, failed-and-recorded, lost (no row, or a row left in flight: must be 0), charged twice
(must be 0) and wrong answers (a delivered answer that is not its request's: must be 0).

Then the teacher-outage scenarios, each a whole ``domdistill run`` against the server as a
process of its own on 127.0.0.1: killed mid-run and left down, killed and restarted, a closed
port (at two budgets), a wrong model name (the server answers 400 with a ``detail`` the way
``transformers serve`` does), a base URL without ``/v1``, timeouts shorter than the generation,
whitespace-only replies. Per scenario: requests the server saw, delivered, failed, charged,
possibly billed, exit status, wall time, the message; then, with the server healthy,
``--resume`` and the same counts again. Nothing delivered may be lost, nothing refused charged,
no scenario may exit 0 with failures unreported, and the closed port must stop in under 60 s.

    python bench/faults.py            # everything (~6-8 min on 2 cores)
    python bench/faults.py --quick    # fewer requests, no whole runs, outage window 5 s

Last line: ``SUMMARY {json}``: one row per scenario, plus ``refused_charged``,
``silent_failures``, ``lost``, ``double_charged`` (each must be 0) and ``closed_port_seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chaos import BALDISTILL, REPO, folder_problems, ledger_check, write_config  # noqa: E402

KEY_ENV = "DOMDISTILL_FAULTS_KEY"


def ledger_counts(path: Path) -> dict[str, int]:
    con = sqlite3.connect(path)
    try:
        status = dict(con.execute("SELECT status, count(*) FROM calls GROUP BY status").fetchall())
        spent = con.execute("SELECT calls FROM spend").fetchone()[0]
        charged = con.execute("SELECT coalesce(sum(charged), 0) FROM calls").fetchone()[0]
    finally:
        con.close()
    return {"rows": sum(status.values()), "delivered": status.get("delivered", 0),
            "failed": status.get("failed", 0), "inflight": status.get("inflight", 0),
            "spent": spent, "charged_rows": charged}


def row(fault: str, rate: str, requests: int, attempts: int, led: dict[str, int], wrong: int,
        note: str = "") -> dict[str, Any]:
    lost = requests - led["delivered"] - led["failed"]
    return {"fault": fault, "rate": rate, "requests": requests, "attempts": attempts,
            "delivered": led["delivered"], "failed_recorded": led["failed"], "lost": lost,
            "double_charged": max(0, led["spent"] - led["charged_rows"])
            + max(0, led["charged_rows"] - requests), "wrong": wrong, "note": note}


# ---------------------------------------------------------------------------- client scenarios
def client_batch(base_url: str, ledger: Path, n: int, timeout_s: float = 2.0, retries: int = 6,
                 base_s: float = 0.02, max_s: float = 0.2, budget: int | None = None):
    """Ask for rationales of the first ``n`` built-in pool inputs; returns (batch, wrong answers)."""
    from domdistill.data.builtin import builtin_dataset
    from domdistill.teachers import Budget, Ledger, PromptSet, RetryPolicy, TeacherClient
    from domdistill.teachers.openai_api import OpenAITeacher

    exs = list(builtin_dataset(size=max(n * 2, 50), seed=1))
    seen, pool = set(), []
    for ex in exs:
        if (ex.domain, ex.input) not in seen:
            seen.add((ex.domain, ex.input))
            pool.append(ex)
    pool = pool[:n]
    client = TeacherClient(OpenAITeacher("teacher", base_url, KEY_ENV, timeout_s),
                           Ledger(ledger, Budget(calls=budget or n)), PromptSet("builtin"),
                           concurrency=8, retry=RetryPolicy(retries, base_s, max_s), max_tokens=64)
    with client:
        batch = client.rationales(pool, with_answer=True, tags={"stage": 1})
    wrong = sum(r.status == "delivered" and not r.correct for r in batch)
    return batch, wrong, len(pool)


def client_scenarios(work: Path, n: int, key: str) -> list[dict[str, Any]]:
    from domdistill.teachers.program_server import Faults, ProgramServer

    cases = [("server error 500", "10%", Faults(error_rate=0.1), {}),
             ("server error 500", "30%", Faults(error_rate=0.3), {}),
             ("server error 500", "50%", Faults(error_rate=0.5), {"retries": 12}),
             ("429 + Retry-After 0.05 s", "30%", Faults(rate_limit_rate=0.3), {"retries": 10}),
             ("slower than timeout (0.3 s)", "20%", Faults(slow_rate=0.2, slow_s=1.0),
              {"timeout_s": 0.3}),
             ("malformed JSON body", "20%", Faults(malformed_rate=0.2), {}),
             ("empty completion", "20%", Faults(empty_rate=0.2), {}),
             ("all of the above", "5% each", Faults(error_rate=0.05, rate_limit_rate=0.05,
                                                     slow_rate=0.05, malformed_rate=0.05,
                                                     empty_rate=0.05, slow_s=1.0),
              {"timeout_s": 0.3, "retries": 8}),
             ("server error 500, no retries", "30%", Faults(error_rate=0.3), {"retries": 0})]
    out = []
    for i, (fault, rate, faults, kw) in enumerate(cases):
        faults.seed = i
        ledger = work / f"client-{i}.sqlite"
        with ProgramServer(faults=faults, api_key=key) as srv:
            batch, wrong, requests = client_batch(srv.base_url, ledger, n, **kw)
            attempts = srv.requests
        note = f"stopped: {batch.stopped[:50]}" if batch.stopped else ""
        out.append(row(fault, rate, requests, attempts, ledger_counts(ledger), wrong, note))
    return out


def rate_limit_that_does_not_lift(work: Path, n: int, key: str) -> list[dict[str, Any]]:
    """Permanent 429 after 40% of the requests: the batch stops with a clear message; a rerun
    against a healthy server sends only the missing ones."""
    from domdistill.teachers.program_server import Faults, ProgramServer

    ledger = work / "client-429.sqlite"
    with ProgramServer(faults=Faults(rate_limit_after=int(n * 0.4)), api_key=key) as srv:
        batch, wrong, requests = client_batch(srv.base_url, ledger, n, retries=2)
        attempts = srv.requests
    first = row("429 that does not lift", f"after {int(n * 0.4)}", requests, attempts,
                ledger_counts(ledger), wrong, "stopped: " + ("rate limit did not lift" in
                                                             (batch.stopped or "")) * "clear message")
    with ProgramServer(api_key=key) as srv:
        again, wrong2, _ = client_batch(srv.base_url, ledger, n)
        resent = srv.requests
    second = row("  rerun, healthy server", "-", requests, resent, ledger_counts(ledger), wrong2,
                 f"sent {resent} (= undelivered {requests - first['delivered']})")
    return [first, second]


def server_killed_and_restarted(work: Path, n: int, key: str) -> dict[str, Any]:
    """The server process is SIGKILLed after a third of the requests and restarted 0.5 s later
    on the same port; the client's retries carry the batch over the gap."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = work / "restart-requests.jsonl"

    def start() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "domdistill.teachers.program_server",
                                 "--port", str(port), "--api-key", key, "--log", str(log),
                                 "--latency-s", "0.02"], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and "serving" in proc.stdout.readline()
        return proc

    ledger = work / "client-restart.sqlite"
    server = start()
    result: dict[str, Any] = {}

    def killer() -> None:
        while not log.exists() or log.read_text().count("\n") < n // 3:
            time.sleep(0.01)
        server.send_signal(signal.SIGKILL)
        server.wait()
        time.sleep(0.5)
        result["server"] = start()

    import threading

    t = threading.Thread(target=killer)
    t.start()
    batch, wrong, requests = client_batch(f"http://127.0.0.1:{port}/v1", ledger, n, retries=10,
                                          base_s=0.1, max_s=1.0)
    t.join()
    result["server"].send_signal(signal.SIGKILL)
    result["server"].wait()
    attempts = log.read_text().count("\n")
    return row("server SIGKILLed + restarted", "once", requests, attempts, ledger_counts(ledger),
               wrong, "stopped" if batch.stopped else "")


# ---------------------------------------------------------------------------- disk full
DISK_FULL = r"""
import json, resource, sys
from pathlib import Path
what, target, limit = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    if what == "json":
        from domdistill.io import atomic_write_json
        atomic_write_json(target, {"payload": "x" * (2 * limit)})
    elif what == "ledger":
        from domdistill.teachers import Budget, Ledger, Tags
        with Ledger(target, Budget(calls=10_000)) as led:
            for i in range(10_000):
                key = f"k{i}"
                led.reserve(key, Tags("d", "1", "rationale"))
                led.complete(key, "y" * 2000)
    elif what == "checkpoint":
        import torch
        from domdistill.training.checkpoints import publish, write_manifest
        staged = target / ".staging" / "checkpoint-2"
        staged.mkdir(parents=True)
        torch.save({"w": torch.zeros(4 * limit // 4)}, staged / "model.pt")
        write_manifest(staged, 2)
        publish(staged, target / "checkpoint-2")
except OSError as e:
    print("ERROR", type(e).__name__, e)
except Exception as e:
    print("ERROR", type(e).__name__, e)
else:
    print("WROTE")
"""


def disk_full(work: Path) -> list[dict[str, Any]]:
    """Each write runs in a child process whose files may not grow past a limit; afterwards the
    previous content must be intact (the state file, the ledger's rows, the last checkpoint)."""
    from domdistill.io import atomic_write_json
    from domdistill.teachers import Budget, Ledger, Tags
    from domdistill.training.checkpoints import latest_checkpoint, publish, write_manifest

    script = work / "disk_full.py"
    script.write_text(DISK_FULL)
    out = []

    def child(what: str, target: Path, limit: int) -> str:
        proc = subprocess.run([sys.executable, str(script), what, str(target), str(limit)],
                              capture_output=True, text=True, timeout=300)
        return (proc.stdout + proc.stderr).strip().splitlines()[-1] if (proc.stdout + proc.stderr).strip() else ""

    state = work / "full" / "state.json"
    atomic_write_json(state, {"stage": 2})
    msg = child("json", state, 64 * 1024)
    intact = json.loads(state.read_text()) == {"stage": 2}
    stray = [p.name for p in state.parent.iterdir() if p.name != "state.json"]
    out.append({"fault": "disk full: state file", "result": msg[:70], "previous_intact": intact,
                "stray": len(stray)})

    led_path = work / "full" / "ledger.sqlite"
    with Ledger(led_path, Budget(calls=10_000)) as led:
        for i in range(20):
            led.reserve(f"old{i}", Tags("d", "0", "rationale"))
            led.complete(f"old{i}", f"answer {i}")
    msg = child("ledger", led_path, 256 * 1024)
    con = sqlite3.connect(led_path)
    ok = con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    old = con.execute("SELECT count(*) FROM calls WHERE key LIKE 'old%' AND status='delivered'").fetchone()[0]
    spent = con.execute("SELECT calls FROM spend").fetchone()[0]
    charged = con.execute("SELECT sum(charged) FROM calls").fetchone()[0]
    inflight = con.execute("SELECT count(*) FROM calls WHERE status='inflight'").fetchone()[0]
    con.close()
    out.append({"fault": "disk full: ledger", "result": msg[:70],
                "previous_intact": ok and old == 20 and spent == charged,
                "note": f"{spent} charged = {charged} rows, {inflight} in flight"})

    ckpts = work / "full" / "checkpoints"
    staged = ckpts / ".staging" / "checkpoint-1"
    staged.mkdir(parents=True)
    (staged / "model.pt").write_bytes(b"\0" * 1000)
    write_manifest(staged, 1)
    publish(staged, ckpts / "checkpoint-1")
    msg = child("checkpoint", ckpts, 512 * 1024)
    latest = latest_checkpoint(ckpts)
    out.append({"fault": "disk full: checkpoint", "result": msg[:70],
                "previous_intact": latest is not None and latest.name == "checkpoint-1"})
    return out


# ---------------------------------------------------------------------------- whole runs
def whole_runs(work: Path, key: str) -> list[dict[str, Any]]:
    """BalDistill end to end: 30% errors with the server restarted mid-run must finish like a
    clean run; a rate limit that does not lift must stop with a clear message and resume."""
    from domdistill.teachers.program_server import Faults, ProgramServer

    env = {**os.environ, KEY_ENV: key, "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
    out = []

    def run(srv_url: str, name: str, resume: bool = False, limit: int | None = None):
        raw = json.loads(json.dumps(BALDISTILL))
        raw["teacher"].update(base_url=srv_url, api_key_env=KEY_ENV, max_retries=10)
        cfg = write_config(raw, work / f"{name}.yaml")
        cmd = [sys.executable, "-m", "domdistill.cli", "run", str(cfg), "--out", str(work / name)]
        pre = None
        if limit is not None:
            def pre() -> None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        return subprocess.run(cmd + (["--resume"] if resume else []), cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600, preexec_fn=pre)

    with ProgramServer(api_key=key) as srv:
        ref = run(srv.base_url, "run-clean")
    assert ref.returncode == 0, ref.stderr[-2000:]
    want = json.loads((work / "run-clean" / "results.json").read_text())

    with ProgramServer(faults=Faults(error_rate=0.3, malformed_rate=0.05, seed=7),
                       api_key=key) as srv:
        got = run(srv.base_url, "run-faulty")
        attempts = srv.requests
    led = ledger_counts(work / "run-faulty" / "ledger.sqlite")
    same = got.returncode == 0 and json.loads((work / "run-faulty" / "results.json").read_text()
                                              )["metrics"] == want["metrics"]
    out.append(row("run: 30% 500 + 5% malformed", "-", led["rows"], attempts, led, 0,
                   "same metrics as the clean run" if same else f"DIFFERENT (exit {got.returncode})"))

    with ProgramServer(faults=Faults(rate_limit_after=40), api_key=key) as srv:
        stopped = run(srv.base_url, "run-429")
        attempts = srv.requests
    message = stopped.stderr.strip().splitlines()[-1] if stopped.stderr.strip() else ""
    led = ledger_counts(work / "run-429" / "ledger.sqlite")
    out.append(row("run: 429 that does not lift", "after 40", led["rows"], attempts, led, 0,
                   f"exit {stopped.returncode}: {message[:60]}"))
    with ProgramServer(api_key=key) as srv:
        resumed = run(srv.base_url, "run-429", resume=True)
        attempts = srv.requests
    led = ledger_counts(work / "run-429" / "ledger.sqlite")
    same = resumed.returncode == 0 and json.loads((work / "run-429" / "results.json").read_text()
                                                  ) ["metrics"] == want["metrics"]
    out.append(row("  --resume, healthy server", "-", led["rows"], attempts, led, 0,
                   "same metrics as the clean run" if same else f"DIFFERENT (exit {resumed.returncode})"))

    with ProgramServer(api_key=key) as srv:
        full = run(srv.base_url, "run-full", limit=300_000)
        corrupt, _ = folder_problems(work / "run-full")
        message = full.stderr.strip().splitlines()[-1] if full.stderr.strip() else ""
        resumed = run(srv.base_url, "run-full", resume=True)
    led = ledger_counts(work / "run-full" / "ledger.sqlite")
    same = resumed.returncode == 0 and json.loads((work / "run-full" / "results.json").read_text()
                                                  )["metrics"] == want["metrics"]
    out.append(row("run: disk full (files <= 300 kB)", "-", led["rows"], 0, led, 0,
                   f"exit {full.returncode}, {len(corrupt)} corrupt; resume: "
                   + ("same metrics" if same else f"DIFFERENT (exit {resumed.returncode})")))
    out[-1]["message"] = message[:160]
    return out


# ---------------------------------------------------------------------------- teacher outages
def outage_runs(work: Path, key: str, outage_s: float | None) -> list[dict[str, Any]]:
    """Whole runs against a server process that dies, is not there, or is misconfigured."""
    import threading

    from domdistill.teachers.program_server import free_port, spawn

    env = {**os.environ, KEY_ENV: key, "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
    rows = []

    def run(name: str, url: str, resume: bool = False, teacher: dict | None = None,
            method: dict | None = None):
        raw = json.loads(json.dumps(BALDISTILL))
        raw["teacher"].update(base_url=url, api_key_env=KEY_ENV, **(teacher or {}))
        if outage_s is not None:
            raw["teacher"].setdefault("max_outage_s", outage_s)
        raw["method"].update(method or {})
        cfg = write_config(raw, work / f"{name}.yaml")
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "domdistill.cli", "run", str(cfg), "--out",
                               str(work / name)] + (["--resume"] if resume else []), cwd=work,
                              env=env, capture_output=True, text=True, timeout=900)
        return proc, time.monotonic() - start

    def record(scenario: str, name: str, proc, seconds: float, requests: int) -> dict[str, Any]:
        led = ledger_counts(work / name / "ledger.sqlite") if (work / name / "ledger.sqlite").exists() \
            else {"rows": 0, "delivered": 0, "failed": 0, "inflight": 0, "spent": 0, "charged_rows": 0}
        con = sqlite3.connect(work / name / "ledger.sqlite")
        maybe = con.execute("SELECT count(*) FROM calls WHERE status='failed' AND charged").fetchone()[0]
        refused_charged = con.execute("SELECT count(*) FROM calls WHERE charged AND billing LIKE "
                                      "'not billed%'").fetchone()[0]
        con.close()
        results = work / name / "results.json"
        warned = "warning:" in proc.stderr
        failures = led["failed"] + maybe
        r = {"scenario": scenario, "requests": requests, "delivered": led["delivered"],
             "failed": led["failed"], "charged": led["charged_rows"], "possibly_billed": maybe,
             "exit": proc.returncode, "seconds": round(seconds, 1),
             "silent": int(proc.returncode == 0 and failures > 0 and not warned),
             "refused_charged": refused_charged,
             "double_charged": max(0, led["spent"] - led["charged_rows"]),
             "finished": results.exists(),
             "message": (proc.stderr.strip().splitlines() or [""])[-1][:150]}
        rows.append(r)
        return r

    def serve(port: int, log: Path, *flags: str) -> subprocess.Popen:
        return spawn(port, "--api-key", key, *flags, log=log)

    def sent(log: Path) -> int:
        return log.read_text().count("\n") if log.exists() else 0

    def resume_healthy(scenario: str, name: str, port: int, log: Path, **kw) -> dict[str, Any]:
        before = sent(log)
        srv = serve(port, log)
        try:
            proc, secs = run(name, f"http://127.0.0.1:{port}/v1", resume=True, **kw)
        finally:
            srv.kill()
            srv.wait()
        r = record(f"  {scenario}: --resume, server healthy", name, proc, secs, sent(log) - before)
        r["lost"] = clean_delivered - r["delivered"] if r["finished"] else None
        return r

    # the reference: how many distinct calls a healthy run delivers
    port, log = free_port(), work / "clean.jsonl"
    srv = serve(port, log)
    proc, secs = run("outage-clean", f"http://127.0.0.1:{port}/v1")
    srv.kill()
    srv.wait()
    clean_delivered = record("healthy server (reference)", "outage-clean", proc, secs, sent(log))["delivered"]

    # killed after 40 requests, left down; then resumed
    port, log = free_port(), work / "down.jsonl"
    srv = serve(port, log, "--latency-s", "0.02")

    def kill_at(n: int, then: Any = None) -> None:
        while sent(log) < n:
            time.sleep(0.005)
        srv.kill()
        if then:
            time.sleep(0.5)
            then()
    t = threading.Thread(target=kill_at, args=(40,))
    t.start()
    proc, secs = run("down", f"http://127.0.0.1:{port}/v1")
    t.join()
    srv.wait()
    record("server killed mid-run, left down", "down", proc, secs, sent(log))
    resume_healthy("killed, left down", "down", port, log)

    # killed after 40 requests, restarted 0.5 s later on the same port
    port, log = free_port(), work / "restart.jsonl"
    srv = serve(port, log, "--latency-s", "0.02")
    holder: list[subprocess.Popen] = []
    t = threading.Thread(target=kill_at, args=(40, lambda: holder.append(serve(port, log))))
    t.start()
    proc, secs = run("restart", f"http://127.0.0.1:{port}/v1")
    t.join()
    srv.wait()
    for p in holder:
        p.kill()
        p.wait()
    r = record("server killed and restarted", "restart", proc, secs, sent(log))
    r["lost"] = clean_delivered - r["delivered"] if r["finished"] else None

    # nothing listening, at a small and a large budget
    closed = []
    for budget, stages in ((28, 3), (840, 1)):
        port = free_port()
        proc, secs = run(f"closed-{budget}", f"http://127.0.0.1:{port}/v1",
                         method={"budget": budget, "stages": stages})
        closed.append(record(f"closed port, budget {budget}", f"closed-{budget}", proc, secs, 0))

    # a wrong model name and a base URL without /v1
    port, log = free_port(), work / "model.jsonl"
    srv = serve(port, log, "--strict-model", "--model", "/models/teacher")
    proc, secs = run("wrong-model", f"http://127.0.0.1:{port}/v1")
    record("wrong model name (HTTP 400 + detail)", "wrong-model", proc, secs, sent(log))
    proc, secs = run("wrong-path", f"http://127.0.0.1:{port}")
    srv.kill()
    srv.wait()
    record("base_url without /v1 (HTTP 404)", "wrong-path", proc, secs, sent(log) - rows[-1]["requests"])

    # every answer slower than the timeout; resumed with a longer timeout
    port, log = free_port(), work / "slow.jsonl"
    srv = serve(port, log, "--slow-rate", "1", "--slow-s", "1.0")
    proc, secs = run("slow", f"http://127.0.0.1:{port}/v1", teacher={"timeout_s": 0.3})
    srv.kill()
    srv.wait()
    record("timeout 0.3 s < generation 1 s", "slow", proc, secs, sent(log))
    resume_healthy("timeouts", "slow", port, log, teacher={"timeout_s": 10})

    # whitespace-only replies (20%): charged with their usage, not retried, reported
    port, log = free_port(), work / "blank.jsonl"
    srv = serve(port, log, "--empty-rate", "0.2")
    proc, secs = run("blank", f"http://127.0.0.1:{port}/v1")
    srv.kill()
    srv.wait()
    r = record("whitespace-only replies (20%)", "blank", proc, secs, sent(log))
    r["silent"] = int(proc.returncode == 0 and "could not be used" not in " ".join(proc.stderr.split()))
    return rows, max(c["seconds"] for c in closed)


def print_outages(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="teacher outages, whole runs through the CLI")
    cols = ["scenario", "requests", "delivered", "failed", "charged", "possibly_billed", "exit",
            "seconds", "message"]
    for c in cols:
        table.add_column(c.replace("_", " "), justify="left" if c in ("scenario", "message") else "right")
    for r in rows:
        table.add_row(*[str(r.get(c, "")) for c in cols])
    Console(width=240).print(table)


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="teacher faults: every request delivered or recorded as failed")
    cols = ["fault", "rate", "requests", "attempts", "delivered", "failed_recorded", "lost",
            "double_charged", "wrong", "note"]
    for c in cols:
        table.add_column(c.replace("_", "-"), justify="left" if c in ("fault", "note") else "right")
    for r in rows:
        table.add_row(*[str(r.get(c, "")) for c in cols])
    Console(width=200).print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200, help="distinct requests per client scenario")
    ap.add_argument("--quick", action="store_true", help="60 requests a scenario, no whole runs")
    ap.add_argument("--work", type=Path, default=None, help="folder for ledgers and run folders")
    args = ap.parse_args()
    n = 60 if args.quick else args.requests
    outage_s = 5.0 if args.quick else None  # None: the default teacher.max_outage_s
    work = args.work or Path(tempfile.mkdtemp(prefix="domdistill-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    key = f"sk-faults-{secrets.token_hex(12)}"
    os.environ[KEY_ENV] = key
    rows = client_scenarios(work, n, key)
    rows += rate_limit_that_does_not_lift(work, n, key)
    rows.append(server_killed_and_restarted(work, n, key))
    if not args.quick:
        rows += whole_runs(work, key)
    print_table(rows)
    full = disk_full(work)
    for r in full:
        print(f"{r['fault']}: previous state intact = {r['previous_intact']} ({r['result']}"
              f"{'; ' + r['note'] if r.get('note') else ''})")
    outages, closed_seconds = outage_runs(work, key, outage_s)
    print_outages(outages)
    lost = sum(r["lost"] for r in rows if isinstance(r.get("lost"), int))
    lost += sum(r.get("lost") or 0 for r in outages)
    summary = {"refused_charged": sum(r["refused_charged"] for r in outages),
               "silent_failures": sum(r["silent"] for r in outages),
               "lost": lost,
               "double_charged": sum(r["double_charged"] for r in rows + outages),
               "closed_port_seconds": closed_seconds,
               "faults": rows, "outages": outages, "disk_full": full}
    print("SUMMARY " + json.dumps(summary))


if __name__ == "__main__":
    main()
