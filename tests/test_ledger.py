"""The call ledger on real SQLite files: budget reservations, crash semantics, concurrency, CLI."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from domdistill.teachers.ledger import Budget, Ledger, Tags

T = Tags(domain="earn", stage="1", kind="rationale")


def test_budget_is_atomic_across_threads(tmp_path: Path) -> None:
    led = Ledger(tmp_path / "ledger.sqlite", Budget(calls=50))
    outcomes: list[str] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        for i in range(20):
            r = led.reserve(f"k{w}-{i}", T)
            with lock:
                outcomes.append(r.outcome)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("new") == 50 and outcomes.count("exhausted") == 110
    assert led.spent()["calls"] == 50
    assert led.counts() == {"inflight": 50}
    led.close()


def test_cached_answer_is_not_charged_again(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.sqlite", Budget(calls=1)) as led:
        assert led.reserve("a", T).outcome == "new"
        led.complete("a", "The answer is: earn", None, 10, 5, 0.1, 1)
        again = led.reserve("a", T)
        assert again.outcome == "cached" and again.record.response == "The answer is: earn"
        assert led.lookup(["a", "b"]).keys() == {"a"}
        assert led.spent()["calls"] == 1 and led.spent()["tokens"] == 15


def test_inflight_after_crash_counts_and_is_resent_once_under_its_charge(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    led = Ledger(path, Budget(calls=2))
    assert led.reserve("a", T).outcome == "new"
    assert led.reserve("b", T).outcome == "new"
    led.complete("b", "done")
    led.close()  # "a" stays in flight, as after a kill
    led = Ledger(path, Budget(calls=2))
    assert led.spent()["calls"] == 2
    assert led.reserve("c", T).outcome == "exhausted"  # the in-flight call still counts
    r = led.reserve("a", T)
    assert r.outcome == "resend"
    led.complete("a", "late answer")
    con = sqlite3.connect(path)
    assert con.execute("SELECT status, sends, charged FROM calls WHERE key='a'").fetchone() == ("delivered", 2, 1)
    assert led.spent()["calls"] == 2
    led.close()


def test_failed_calls_are_dead_letters_and_release_only_when_never_billed(tmp_path: Path) -> None:
    with Ledger(tmp_path / "ledger.sqlite", Budget(calls=3)) as led:
        for k in "abc":
            led.reserve(k, T)
        led.fail("a", "HTTP 500 (after 7 attempts)", attempts=7, release=True)
        led.fail("b", "request timed out", attempts=7, release=False)
        assert led.spent()["calls"] == 2
        assert led.counts() == {"failed": 2, "inflight": 1}
        assert led.reserve("b", T).outcome == "resend"  # charge kept, no new charge
        assert led.reserve("a", T).outcome == "new"
        assert led.reserve("d", T).outcome == "exhausted"
        assert led.lookup(["a", "b"]) == {}  # failures are never served as answers


def test_operations_in_one_transaction_commit_or_roll_back_together(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger(path, Budget(calls=10)) as led:
        with led.transaction():
            assert [led.reserve(k, T).outcome for k in "ab"] == ["new", "new"]
            led.complete("a", "answer a")
            other = sqlite3.connect(path)  # another connection sees nothing before the commit
            assert other.execute("SELECT count(*) FROM calls").fetchone() == (0,)
        assert other.execute("SELECT key, status FROM calls ORDER BY key").fetchall() == [
            ("a", "delivered"), ("b", "inflight")]
        with pytest.raises(RuntimeError, match="interrupted"):
            with led.transaction():
                led.reserve("c", T)
                raise RuntimeError("interrupted")
        assert led.spent()["calls"] == 2 and led.counts() == {"delivered": 1, "inflight": 1}
        other.close()


def test_shared_cache_serves_other_runs_without_charge(tmp_path: Path) -> None:
    shared = tmp_path / "cache.sqlite"
    with Ledger(tmp_path / "run1" / "ledger.sqlite", shared_cache=shared) as one:
        one.reserve("k", T)
        one.complete("k", "cached answer", {"answer": "earn"}, 3, 4)
    with Ledger(tmp_path / "run2" / "ledger.sqlite", Budget(calls=1), shared_cache=shared) as two:
        found = two.lookup(["k"])
        assert found["k"].response == "cached answer" and found["k"].cached
        assert two.spent()["calls"] == 0
        assert two.reserve("k", T).outcome == "cached"


WRITER = r"""
import sys
from domdistill.teachers.ledger import Ledger, Tags
path, proc, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Ledger(path) as led:
    for i in range(n):
        key = f"p{proc}-{i}"
        assert led.reserve(key, Tags(domain=f"d{i % 5}", stage=proc, kind="rationale")).outcome == "new"
        led.complete(key, f"answer {key}", None, 1, 1, 0.0, 1)
"""


def test_concurrent_writers_threads_and_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(p), "150"])
             for p in range(4)]
    led = Ledger(path)

    def worker(w: int) -> None:
        futs = []
        for i in range(150):
            key = f"t{w}-{i}"
            assert led.reserve(key, Tags(domain="t", stage="t", kind="rationale")).outcome == "new"
            futs.append(led.complete(key, f"answer {key}"))
        for f in futs:
            f

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(p.wait(120) == 0 for p in procs)
    led.close()
    con = sqlite3.connect(path)
    rows = dict(con.execute("SELECT key, response FROM calls WHERE status='delivered'").fetchall())
    assert len(rows) == 8 * 150 and all(v == f"answer {k}" for k, v in rows.items())
    assert con.execute("SELECT calls FROM spend").fetchone()[0] == 8 * 150


def _cli(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("domdistill")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def test_ledger_cli_reports_spend_by_domain_stage_and_status(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with Ledger(run / "ledger.sqlite", Budget(calls=10), price_per_1k=(1.0, 2.0)) as led:
        for i, dom in enumerate(["earn", "earn", "acq", "tin"]):
            led.reserve(f"k{i}", Tags(domain=dom, stage=str(1 + i % 2), kind="rationale"), None, 10)
        led.complete("k0", "x", None, 100, 50)
        led.complete("k2", "y", None, 100, 50)
        led.fail("k3", "HTTP 429: rate limited (after 3 attempt(s))", 3, release=True)
    out = _cli("ledger", str(run), "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["spent"]["calls"] == 3 and rep["limits"]["calls"] == 10
    assert rep["by_domain"]["earn"]["delivered"] == 1 and rep["by_domain"]["earn"]["inflight"] == 1
    assert rep["by_status"]["failed"]["charged"] == 0
    assert rep["by_stage"]["1"]["rows"] == 2
    # two delivered at real usage + the in-flight call's reserved estimate (10 prompt tokens)
    assert rep["spent"]["money"] == pytest.approx(2 * (0.1 + 0.1) + 0.01)
    text = _cli("ledger", str(run))
    assert text.returncode == 0 and "spend by domain" in text.stdout and "rate limited" in text.stdout
    missing = _cli("ledger", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no teacher ledger" in " ".join(missing.stderr.split())
