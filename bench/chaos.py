"""Chaos bench: SIGKILL runs at random moments, resume each time, compare with an uninterrupted run.

Two tiny runs on the built-in task: BalDistill A (nano student, 3 stages, the teacher behind a
real OpenAI-compatible server on 127.0.0.1 answering with the program teacher's solutions) and
DDK (nano student distilled from a tiny teacher trained for a few steps). Each is first run
without interruption (the reference); then a second run is started as
``domdistill run CFG --out DIR`` and killed with SIGKILL N times, each time resumed with
``--resume``. Most kills come after a random delay; some are aimed at a teacher call in flight or
a checkpoint being written. After every kill the folder is checked (ledger integrity, the budget,
every JSON/YAML file readable, saved students and checkpoints complete); at the end the results,
state and ledger must equal the reference's (timings aside) and no call may be charged twice.

    python bench/chaos.py                   # 20 kills per method (~10-15 min on 2 cores)
    python bench/chaos.py --kills 3 --methods baldistill

Last line: ``SUMMARY {json}`` with one entry per method: ``kills``, ``survived``, ``mismatches``,
``double_charged`` (plus ``rounds``, ``budget_exceeded``, ``corrupt``, ``stray_files``, ``seconds``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
KEY_ENV = "DOMDISTILL_CHAOS_KEY"
TIMING_KEYS = {"wall_seconds", "seconds"}
LEDGER_COLUMNS = "key, teacher, domain, stage, kind, status, charged, cached, response, data, " \
                 "prompt_tokens, completion_tokens, cost"

BALDISTILL = {
    "data": {"path": "builtin", "builtin_size": 200, "max_test_per_domain": 3},
    "teacher": {"kind": "openai", "model": "teacher", "api_key_env": KEY_ENV, "timeout_s": 10,
                "retry_base_s": 0.05, "retry_max_s": 0.5, "concurrency": 4},
    "student": {"model": "nano"},
    "method": {"name": "baldistill_a", "budget": 98, "stages": 3, "score_max_new_tokens": 16,
               "score_candidates": 8},
    "training": {"epochs": 1, "batch_size": 16, "max_seq_len": 80, "learning_rate": 3e-3,
                 "cpu_threads": 1, "deterministic": True, "save_steps": 2},
    "evaluation": {"max_new_tokens": 16, "bootstrap": 10},
    "output": {"tracking": []},
}
DDK_DATA = {"path": "builtin", "builtin_size": 400, "max_test_per_domain": 4}
DDK_TRAINING = {"learning_rate": 3e-3, "batch_size": 8, "max_seq_len": 64, "cpu_threads": 1,
                "deterministic": True, "logging_steps": 1}


# ---------------------------------------------------------------------------- checks
def ledger_rows(run: Path) -> list[tuple]:
    if not (run / "ledger.sqlite").is_file():
        return []
    con = sqlite3.connect(run / "ledger.sqlite")
    try:
        return con.execute(f"SELECT {LEDGER_COLUMNS} FROM calls ORDER BY key").fetchall()
    finally:
        con.close()


def ledger_check(run: Path, budget: int | None) -> dict[str, Any]:
    """Integrity, charged calls (spend table and rows) and rows per status of a run's ledger."""
    path = run / "ledger.sqlite"
    if not path.is_file():
        return {"ok": True, "spent": 0, "charged_rows": 0, "status": {}, "problems": []}
    con = sqlite3.connect(path)
    try:
        problems = []
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        if integrity != "ok":
            problems.append(f"ledger integrity: {integrity}")
        spent = con.execute("SELECT calls FROM spend").fetchone()[0]
        charged = con.execute("SELECT coalesce(sum(charged), 0) FROM calls").fetchone()[0]
        status = dict(con.execute("SELECT status, count(*) FROM calls GROUP BY status").fetchall())
    finally:
        con.close()
    if spent != charged:
        problems.append(f"spend table says {spent} calls, rows say {charged}")
    if budget is not None and spent > budget:
        problems.append(f"budget exceeded: {spent} > {budget}")
    return {"ok": not problems, "spent": spent, "charged_rows": charged, "status": status,
            "problems": problems}


def folder_problems(run: Path) -> tuple[list[str], list[str]]:
    """(corrupt, stray): files a resume would read that cannot be read; leftovers it ignores."""
    import yaml
    from safetensors import safe_open

    from domdistill.training.checkpoints import checkpoints, is_complete

    corrupt, stray = [], []
    for p in sorted(run.rglob("*")):
        rel = str(p.relative_to(run))
        hidden = any(part.startswith(".") for part in p.relative_to(run).parts)
        if hidden:
            if p.is_file() or p.name.endswith((".tmp", ".old")):
                stray.append(rel)
            continue
        if not p.is_file():
            continue
        try:
            if p.suffix == ".json":
                json.loads(p.read_text(encoding="utf-8"))
            elif p.suffix in (".yaml", ".yml"):
                yaml.safe_load(p.read_text(encoding="utf-8"))
            elif p.suffix == ".safetensors":
                with safe_open(str(p), "pt") as f:
                    for k in f.keys():
                        f.get_tensor(k)
        except Exception as e:  # noqa: BLE001 - any unreadable file is the finding
            corrupt.append(f"{rel}: {type(e).__name__}: {e}")
    for student in [*(run / "students").glob("stage-*"), run / "student"]:
        if student.is_dir() and not (student / "config.json").is_file():
            corrupt.append(f"{student.relative_to(run)}: saved student without config.json")
    for folder in {c.parent for c in run.rglob("checkpoint-*")}:
        for c in checkpoints(folder):
            if not is_complete(c):
                stray.append(f"{c.relative_to(run)} (incomplete, never loaded)")
    return corrupt, stray


def strip_timing(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where two JSON values differ (at most a few per branch)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}: only in one" for k in set(a) ^ set(b)]
        for k in sorted(set(a) & set(b)):
            out += differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {str(a)[:60]} != {str(b)[:60]}"]


def compare_runs(run: Path, ref: Path, files: tuple[str, ...]) -> list[str]:
    """Mismatches between a resumed run and the reference: result files and ledger rows."""
    out = []
    for name in files:
        if not (run / name).is_file():
            out.append(f"{name}: missing")
            continue
        got = strip_timing(json.loads((run / name).read_text()))
        want = strip_timing(json.loads((ref / name).read_text()))
        out += [f"{name}{d}" for d in differences(got, want)]
    got_rows, ref_rows = ledger_rows(run), ledger_rows(ref)
    if got_rows != ref_rows:
        diff = len(set(got_rows) ^ set(ref_rows))
        out.append(f"ledger: {diff} rows differ ({len(got_rows)} vs {len(ref_rows)})")
    return out


# ---------------------------------------------------------------------------- running
class Runner:
    """Starts ``domdistill run`` for one config; logs every attempt's output to ``log``."""

    def __init__(self, cfg_path: Path, env: dict[str, str], log: Path):
        self.cfg_path, self.env, self.log = cfg_path, env, log

    def start(self, out: Path, resume: bool) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "domdistill.cli", "run", str(self.cfg_path), "--out", str(out)]
        if resume:
            cmd.append("--resume")
        with open(self.log, "a") as fh:
            fh.write(f"\n$ {' '.join(cmd)}\n")
        return subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=open(self.log, "a"),
                                stderr=subprocess.STDOUT, start_new_session=True)

    def run(self, out: Path, resume: bool = False) -> tuple[int, float]:
        start = time.monotonic()
        proc = self.start(out, resume)
        return proc.wait(), time.monotonic() - start


def until(cond: Callable[[], bool], proc: subprocess.Popen, timeout: float) -> bool:
    """Poll ``cond`` every 10 ms while ``proc`` lives; True when it held before the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if cond():
            return True
        time.sleep(0.01)
    return False


def checkpoint_writing(run: Path) -> bool:
    return any(run.rglob(".staging/*")) or any(p.name.endswith(".tmp") for p in run.rglob(".*"))


def kill_moment(proc: subprocess.Popen, out: Path, rng: random.Random, startup: float,
                work_s: float, kills: int, requests: Callable[[], int] | None) -> str:
    """Wait for a random moment to kill ``proc``: after a random delay (mostly), or when a
    teacher request of this attempt is in flight, or while a checkpoint is being written."""
    mode = rng.choices(["time", "teacher", "checkpoint"], [0.7, 0.15, 0.15])[0]
    if mode == "teacher" and requests is None:
        mode = "checkpoint"
    if mode == "time":
        early = rng.random() < 0.15  # some kills land while the run starts or reloads
        delay = rng.uniform(0, startup) if early else startup + rng.uniform(0, 2 * work_s / kills)
        until(lambda: False, proc, delay)
    elif mode == "teacher":
        assert requests is not None
        seen = requests()
        if until(lambda: requests() > seen, proc, startup + work_s):
            time.sleep(rng.uniform(0, 0.1))
    else:
        until(lambda: checkpoint_writing(out), proc, startup + work_s)
    return mode


def chaos(name: str, runner: Runner, ref: Path, work: Path, kills: int, rng: random.Random,
          ref_seconds: float, startup: float, budget: int | None, files: tuple[str, ...],
          requests: Callable[[], int] | None) -> dict[str, Any]:
    """Kill/resume one method ``kills`` times; a run that finishes first is compared and a new
    round starts. The kills of a round survived when the round ends like the reference."""
    t0 = time.monotonic()
    work_s = max(1.0, ref_seconds - startup)
    s: dict[str, Any] = {"kills": 0, "survived": 0, "mismatches": 0, "double_charged": 0,
                         "rounds": 0, "budget_exceeded": 0, "corrupt": 0, "stray_files": 0,
                         "failed_resumes": 0, "kill_modes": {"time": 0, "teacher": 0, "checkpoint": 0},
                         "details": []}
    while s["kills"] < kills:
        s["rounds"] += 1
        out = work / f"{name}-round{s['rounds']}"
        round_kills = round_bad = 0
        while True:
            occupied = out.is_dir() and any(p.is_file() for p in out.rglob("*"))
            proc = runner.start(out, resume=occupied)
            if s["kills"] < kills:
                mode = kill_moment(proc, out, rng, startup, work_s, kills, requests)
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    s["kills"] += 1
                    round_kills += 1
                    s["kill_modes"][mode] += 1
                    led = ledger_check(out, budget)
                    corrupt, _ = folder_problems(out)
                    s["budget_exceeded"] += any("budget exceeded" in p for p in led["problems"])
                    s["corrupt"] += len(corrupt) + (not led["ok"])
                    round_bad += len(corrupt) + (not led["ok"])
                    s["details"] += [f"after kill {s['kills']}: {p}" for p in led["problems"] + corrupt]
                    continue
            if proc.wait() != 0:
                s["failed_resumes"] += 1
                s["details"].append(f"round {s['rounds']}: exit {proc.returncode} (see {runner.log})")
                break
            mism = compare_runs(out, ref, files)
            got, want = ledger_check(out, budget), ledger_check(ref, budget)
            double = max(0, got["spent"] - want["spent"])
            _, stray = folder_problems(out)
            s["mismatches"] += len(mism)
            s["double_charged"] += double
            s["stray_files"] += len(stray)
            s["details"] += [f"round {s['rounds']}: {m}" for m in mism]
            s["details"] += [f"round {s['rounds']}: stray {x}" for x in stray[:5]]
            if not mism and not double and not round_bad:
                s["survived"] += round_kills
            break
        print(f"[{name}] round {s['rounds']}: {round_kills} kills ({s['kills']}/{kills}), "
              f"{s['mismatches']} mismatches so far, {time.monotonic() - t0:.0f} s", flush=True)
    s["seconds"] = round(time.monotonic() - t0, 1)
    return s


def reference(name: str, runner: Runner, ref: Path) -> tuple[float, float]:
    """The uninterrupted run: (seconds, seconds until its folder held config.yaml)."""
    start = time.monotonic()
    proc = runner.start(ref, resume=False)
    until(lambda: (ref / "config.yaml").is_file(), proc, 600)
    startup = time.monotonic() - start
    rc = proc.wait()
    if rc != 0:
        raise SystemExit(f"[{name}] the uninterrupted run failed (exit {rc}); see {runner.log}")
    return time.monotonic() - start, startup


def write_config(raw: dict[str, Any], path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def bench_baldistill(work: Path, kills: int, rng: random.Random) -> dict[str, Any]:
    from domdistill.teachers.program_server import Faults, ProgramServer

    key = f"sk-chaos-{secrets.token_hex(12)}"
    env = {**os.environ, KEY_ENV: key, "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
    with ProgramServer(faults=Faults(latency_s=0.05), api_key=key) as server:
        raw = json.loads(json.dumps(BALDISTILL))
        raw["teacher"]["base_url"] = server.base_url
        runner = Runner(write_config(raw, work / "baldistill.yaml"), env, work / "baldistill.log")
        ref = work / "baldistill-ref"
        seconds, startup = reference("baldistill", runner, ref)
        print(f"[baldistill] reference: {seconds:.1f} s ({startup:.1f} s to start), "
              f"{server.requests} teacher requests", flush=True)
        result = chaos("baldistill", runner, ref, work, kills, rng, seconds, startup,
                       raw["method"]["budget"], ("results.json", "state.json"),
                       lambda: server.requests)
        result["server_requests"] = server.requests
    return result


def bench_ddk(work: Path, kills: int, rng: random.Random) -> dict[str, Any]:
    from domdistill.methods.ddk_demo import ensure_teacher, student_config, teacher_config

    teacher = ensure_teacher(teacher_config(DDK_DATA, DDK_TRAINING, "micro", 30, 3e-3),
                             work / "ddk-teacher")
    raw = student_config("ddk", DDK_DATA, {**DDK_TRAINING, "save_steps": 4}, teacher, "nano",
                         60, 10, 8, work)
    raw["evaluation"] = {"batch_size": 32}
    raw["output"] = {"tracking": []}
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
    runner = Runner(write_config(raw, work / "ddk.yaml"), env, work / "ddk.log")
    ref = work / "ddk-ref"
    seconds, startup = reference("ddk", runner, ref)
    print(f"[ddk] reference: {seconds:.1f} s ({startup:.1f} s to start)", flush=True)
    return chaos("ddk", runner, ref, work, kills, rng, seconds, startup, None,
                 ("results.json", "ddk_state.json"), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs per method (default 20)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--methods", nargs="+", default=["baldistill", "ddk"],
                    choices=["baldistill", "ddk"])
    ap.add_argument("--work", type=Path, default=None,
                    help="folder for the run folders and logs (default: a temporary folder)")
    ap.add_argument("--details", action="store_true", help="print every finding, not only counts")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="domdistill-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}", flush=True)
    benches = {"baldistill": bench_baldistill, "ddk": bench_ddk}
    summary = {}
    for name in args.methods:
        result = benches[name](work, args.kills, random.Random(f"{args.seed}:{name}"))
        details = result.pop("details")
        for line in details if args.details else details[:10]:
            print(f"[{name}] {line}")
        summary[name] = result
    print("SUMMARY " + json.dumps(summary))


if __name__ == "__main__":
    main()
