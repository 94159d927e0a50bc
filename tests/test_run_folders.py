"""Run folders a hostile user cannot corrupt, through the real CLI: one owner at a time, a
ledger that must be the run's own, resumes that check what they resume, secrets kept out of
every file and message, and one ``error:`` line (never a traceback) for everything else."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from domdistill.teachers.program_server import free_port, spawn

REPO = Path(__file__).resolve().parents[1]
KEY_ENV = "DOMDISTILL_FOLDERS_KEY"
SECRET = "sk-folders-9f8e7d6c5b4a39281706f5e4"
BASE = {
    "data": {"path": "builtin", "builtin_size": 200, "max_test_per_domain": 3},
    "teacher": {"kind": "program"},
    "student": {"model": "nano"},
    "method": {"name": "baldistill_a", "budget": 42, "stages": 3, "score_max_new_tokens": 16,
               "score_candidates": 8},
    "training": {"epochs": 1, "batch_size": 16, "max_seq_len": 80, "learning_rate": 3e-3,
                 "cpu_threads": 1},
    "evaluation": {"max_new_tokens": 16, "bootstrap": 10},
    "output": {"tracking": []},
}
ENV = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
       "COLUMNS": "4000"}


def write_config(path: Path, raw: dict | None = None, **sections: dict) -> Path:
    raw = json.loads(json.dumps(raw or BASE))
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(raw))
    return path


def cli(*args: str, env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "domdistill.cli", *map(str, args)], cwd=cwd,
                          env=env or ENV, capture_output=True, text=True, timeout=600)


def invoke(args: list, capsys, monkeypatch) -> tuple[int, str]:
    """``domdistill ARGS`` in this process through the console entry point: (exit, stderr)."""
    from domdistill import cli as entry

    monkeypatch.setattr(sys, "argv", ["domdistill", *map(str, args)])
    monkeypatch.setattr(entry.err_console, "width", 4000)
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        entry.main()
    return done.value.code, capsys.readouterr().err


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def error_line(stderr: str) -> str:
    """The one ``error:`` line, asserting there is exactly one and no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


def ledger_counts(run: Path) -> dict[str, int]:
    con = sqlite3.connect(run / "ledger.sqlite")
    rows, charged, delivered = con.execute(
        "SELECT count(*), sum(charged), sum(status = 'delivered') FROM calls").fetchone()
    spent = con.execute("SELECT calls FROM spend").fetchone()[0]
    con.close()
    return {"rows": rows, "charged": charged, "delivered": delivered, "spent": spent}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """A finished BalDistill A run (program teacher, 42 calls) and its config file."""
    root = tmp_path_factory.mktemp("finished")
    cfg = write_config(root / "cfg.yaml")
    done = cli("run", cfg, "--out", root / "run")
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "run", cfg


def copy_of(finished: tuple[Path, Path], tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    return run


# ------------------------------------------------------------------ the ledger is the truth
def _swap_ledger(run: Path) -> None:
    from domdistill.teachers.ledger import Ledger

    (run / "ledger.sqlite").unlink()
    for extra in run.glob("ledger.sqlite-*"):
        extra.unlink()
    Ledger(run / "ledger.sqlite").close()  # another run's ledger: its own id, no rows


def _delete_rows(run: Path) -> None:
    con = sqlite3.connect(run / "ledger.sqlite")
    con.execute("DELETE FROM calls WHERE rowid IN (SELECT rowid FROM calls LIMIT 10)")
    con.commit()
    con.close()


LEDGER_CASES = {
    "deleted": (lambda run: (run / "ledger.sqlite").unlink(), "the ledger is missing"),
    "truncated": (lambda run: (run / "ledger.sqlite").write_bytes(b""), "the ledger is empty"),
    "garbage": (lambda run: (run / "ledger.sqlite").write_bytes(b"not sqlite" * 100),
                "the ledger cannot be read"),
    "swapped": (_swap_ledger, "not this run's ledger"),
    "rows deleted": (_delete_rows, "replaced by an older copy or rows were deleted"),
}


@pytest.mark.parametrize("case", sorted(LEDGER_CASES))
def test_resume_refuses_a_ledger_that_is_not_the_runs_own(case, finished, tmp_path, capsys,
                                                          monkeypatch) -> None:
    run = copy_of(finished, tmp_path)
    (run / "results.json").unlink()  # unfinished: a resume would have calls to make
    spoil, message = LEDGER_CASES[case]
    spoil(run)
    before = checksums(run)
    code, err = invoke(["run", finished[1], "--out", run, "--resume"], capsys, monkeypatch)
    line = error_line(err)
    assert code == 2 and message in line and "ledger.sqlite" in line, line
    assert "42 charged calls" in line or case in ("swapped", "rows deleted"), line
    assert "--overwrite" in line  # how to recover
    assert checksums(run) == before


# ------------------------------------------------------------------ resume checks the config
CONFIG_CASES = {
    "method": ({"method": {"name": "random_ft_cot"}}, "method.name: saved 'baldistill_a', now 'random_ft_cot'"),
    "data size": ({"data": {"builtin_size": 300}}, "data.builtin_size: saved 200, now 300"),
    "student": ({"student": {"model": "micro"}}, "student.model: saved 'nano', now 'micro'"),
    "seed": ({"training": {"seed": 3}}, "training.seed: saved 0, now 3"),
    "budget after the end": ({"method": {"budget": 60}}, "the run has finished"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_resume_refuses_a_different_run_before_changing_anything(case, finished, tmp_path, capsys,
                                                                 monkeypatch) -> None:
    run = copy_of(finished, tmp_path)
    change, message = CONFIG_CASES[case]
    cfg = write_config(tmp_path / "changed.yaml", **change)
    before = checksums(run)
    code, err = invoke(["run", cfg, "--out", run, "--resume"], capsys, monkeypatch)
    line = " ".join(error_line(err).split()) + " " + " ".join(err.split())
    assert code == 2 and message in line, err
    assert checksums(run) == before


DAMAGE = {
    "state.json": (b'{"stage": 2, "pool": [', "state.json: cannot read the run's state"),
    "run.json": (b"\x00\x01garbage", "run.json: cannot read the run's identity"),
    "config.yaml": (b"method: [unclosed\n", "config.yaml:2: invalid YAML"),
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_damaged_run_files_are_named_not_tracebacks(name, finished, tmp_path, capsys,
                                                    monkeypatch) -> None:
    run = copy_of(finished, tmp_path)
    content, message = DAMAGE[name]
    (run / name).write_bytes(content)
    before = checksums(run)
    code, err = invoke(["run", finished[1], "--out", run, "--resume"], capsys, monkeypatch)
    assert code == 2 and message in error_line(err), err
    assert checksums(run) == before


def test_state_of_another_shape_is_refused(finished, tmp_path, capsys, monkeypatch) -> None:
    run = copy_of(finished, tmp_path)
    (run / "results.json").unlink()
    (run / "state.json").write_text(json.dumps({"epoch": 3, "weights": [0.5]}))
    before = checksums(run)
    code, err = invoke(["run", finished[1], "--out", run, "--resume"], capsys, monkeypatch)
    assert code == 2 and "not a state file of this method" in error_line(err)
    assert checksums(run) == before


def test_an_allowed_change_is_resumed_and_recorded(finished, tmp_path, capsys, monkeypatch) -> None:
    """A finished run resumed with a new concurrency and a moved output path: accepted, the
    change listed in run.json's history and config.yaml updated; nothing is paid again."""
    run = copy_of(finished, tmp_path)
    cfg = write_config(tmp_path / "faster.yaml", teacher={"concurrency": 3})
    code, _ = invoke(["run", cfg, "--out", run, "--resume"], capsys, monkeypatch)
    assert code == 0
    history = json.loads((run / "run.json").read_text())["history"]
    assert [h["action"] for h in history] == ["run", "resume"]
    assert history[1]["changed"] == {"teacher.concurrency": [16, 3]}
    assert yaml.safe_load((run / "config.yaml").read_text())["teacher"]["concurrency"] == 3
    assert ledger_counts(run) == ledger_counts(finished[0])


# ------------------------------------------------------------------ one owner at a time
def _wait_for(path: Path, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.05)


def test_two_processes_on_one_folder_one_refuses_and_the_live_run_is_intact(tmp_path) -> None:
    cfg = write_config(tmp_path / "cfg.yaml", training={"epochs": 12})
    run = tmp_path / "run"
    live = subprocess.Popen([sys.executable, "-m", "domdistill.cli", "run", str(cfg), "--out",
                             str(run)], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(run / ".owner")
        _wait_for(run / "run.json")
        tries = {what: subprocess.Popen([sys.executable, "-m", "domdistill.cli", "run", str(cfg),
                                         "--out", str(run), *flags], cwd=REPO, env=ENV, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for what, flags in (("run", ()), ("overwrite", ("--overwrite",)),
                                     ("resume", ("--resume",)))}
        others = {what: (p.communicate(timeout=300)[1], p.returncode) for what, p in tries.items()}
        assert live.poll() is None, "the live run ended before the others were tried"
        out, err = live.communicate(timeout=600)
    finally:
        if live.poll() is None:
            live.kill()
    for what, (stderr, code) in others.items():
        line = error_line(stderr)
        assert code == 2 and f"PID {live.pid}" in line and "is using this run folder" in line, \
            (what, line)
    assert live.returncode == 0, err[-3000:]
    counts = ledger_counts(run)
    assert counts == {"rows": 42, "charged": 42, "delivered": 42, "spent": 42}
    results = json.loads((run / "results.json").read_text())
    assert results["budget"]["spent"] == 42 and len(results["history"]) == 3


def test_ctrl_c_exits_130_with_one_line_and_the_run_resumes_paying_nothing_twice(tmp_path) -> None:
    cfg = write_config(tmp_path / "cfg.yaml")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "domdistill.cli", "run", str(cfg), "--out",
                             str(run)], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(run / "state.json")  # stage 1 is done
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in error_line(err) and err.rstrip().splitlines()[-1].startswith("error: ")
    assert not (run / "results.json").exists()
    again = cli("run", cfg, "--out", run, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert ledger_counts(run) == {"rows": 42, "charged": 42, "delivered": 42, "spent": 42}


def test_ctrl_c_while_teacher_calls_are_retried_is_one_line(tmp_path) -> None:
    """The teacher's port is closed, so every call waits in the retry backoff when Ctrl-C
    comes: exit 130, one line, no asyncio noise, and nothing was charged."""
    cfg = write_config(tmp_path / "cfg.yaml", teacher={
        "kind": "openai", "model": "teacher", "api_key_env": KEY_ENV, "max_outage_s": 120,
        "base_url": f"http://127.0.0.1:{free_port()}/v1", "retry_base_s": 0.2})
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "domdistill.cli", "run", str(cfg), "--out",
                             str(run)], cwd=REPO, env={**ENV, KEY_ENV: SECRET},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(run / "ledger.sqlite")
    end = time.monotonic() + 60
    while time.monotonic() < end:  # wait for the first refused connection to be recorded
        con = sqlite3.connect(run / "ledger.sqlite")
        n = con.execute("SELECT count(*) FROM calls").fetchone()[0]
        con.close()
        if n:
            break
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in error_line(err)
    for noise in ("Task was destroyed", "Event loop is closed", "Exception ignored", "Aborted"):
        assert noise not in err, err[-3000:]
    assert ledger_counts(run)["charged"] in (0, None)
    assert SECRET not in out + err


# ------------------------------------------------------------------ secrets
def _grep_everything(texts: list[str], roots: list[Path]) -> None:
    files = [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]
    for piece in (SECRET, SECRET[:12], SECRET[-8:]):
        for text in texts:
            assert piece not in text, (piece, text[-2000:])
        for p in files:
            assert piece.encode() not in p.read_bytes(), (piece, p)


def test_secrets_stay_references_in_every_file_and_message(tmp_path) -> None:
    """${VAR} references saved as written, the key typed where the variable name belongs,
    ${VAR} in api_key_env, the key in another field, a rejected key that the server echoes, and
    a run whose server is gone with the key in its URL: the key is in no file and no output."""
    port = free_port()
    server = spawn(port, "--api-key", SECRET)
    env = {**ENV, KEY_ENV: SECRET, "DOMDISTILL_FOLDERS_HOST": f"127.0.0.1:{port}"}
    teacher = {"kind": "openai", "model": "teacher", "api_key_env": KEY_ENV, "timeout_s": 5,
               "retry_base_s": 0.05, "retry_max_s": 0.2, "max_outage_s": 2,
               "base_url": "http://${DOMDISTILL_FOLDERS_HOST}/v1"}
    outputs, roots = [], []
    try:
        ok_cfg = write_config(tmp_path / "ok.yaml", teacher=teacher)
        ok = cli("run", ok_cfg, "--out", tmp_path / "ok", env=env)
        assert ok.returncode == 0, ok.stderr[-3000:]
        saved = yaml.safe_load((tmp_path / "ok" / "config.yaml").read_text())
        assert saved["teacher"]["base_url"] == "http://${DOMDISTILL_FOLDERS_HOST}/v1"
        wrong = cli("run", ok_cfg, "--out", tmp_path / "wrong",
                    env={**env, KEY_ENV: SECRET[:-4] + "0000"})
        assert wrong.returncode == 2 and "HTTP 401" in error_line(wrong.stderr)
        outputs += [ok.stdout, ok.stderr, wrong.stdout, wrong.stderr]
        roots += [tmp_path / "ok", tmp_path / "wrong"]
    finally:
        server.kill()
        server.wait()
    in_url = {**teacher, "base_url": f"http://127.0.0.1:{port}/v1?key=${{{KEY_ENV}}}"}
    gone = cli("run", write_config(tmp_path / "gone.yaml", teacher=in_url), "--out",
               tmp_path / "gone", env=env)
    assert gone.returncode == 2 and "teacher requests failed" in error_line(gone.stderr)
    saved = yaml.safe_load((tmp_path / "gone" / "config.yaml").read_text())
    assert saved["teacher"]["base_url"].endswith(f"?key=${{{KEY_ENV}}}")
    outputs += [gone.stdout, gone.stderr]
    roots.append(tmp_path / "gone")
    misplaced = {
        "key as variable name": ({"api_key_env": SECRET}, "looks like an API key"),
        "other key as variable name": ({"api_key_env": "my-key/123"}, "not the key itself"),
        "reference as variable name": ({"api_key_env": f"${{{KEY_ENV}}}"}, "not a ${...} reference"),
        "key in another field": ({"model": SECRET}, "looks like an API key"),
        "reference expanding to a key in a number field": (
            {"concurrency": f"${{{KEY_ENV}}}"}, f"valid integer, unable to parse string as an "
                                                f"integer (got ${{{KEY_ENV}}})"),
    }
    for name, (fields, message) in misplaced.items():
        cfg = write_config(tmp_path / "bad.yaml", teacher={**teacher, **fields})
        proc = cli("run", cfg, "--out", tmp_path / name, env=env)
        assert proc.returncode == 2 and message in error_line(proc.stderr), (name, proc.stderr)
        assert not (tmp_path / name).exists()
        outputs += [proc.stdout, proc.stderr]
    _grep_everything(outputs, roots)


# ------------------------------------------------------------------ one error line
def test_os_errors_and_misuse_are_one_line(finished, tmp_path, capsys, monkeypatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cfg = write_config(tmp_path / "cfg.yaml")
    cases = {
        "run folder under a file": (["run", cfg, "--out", blocker / "run"], "a-file"),
        "--set into a value": (["run", cfg, "--set", "method.budget.x=1"],
                               "'method.budget' is a value (int), not a section"),
        "--set without a key": (["run", cfg, "--set", "=3"], "--set expects section.key=value"),
        "eval --out under a file": (["eval", "--model", finished[0] / "students" / "stage-3",
                                     "--data", "builtin", "--out", blocker / "results.json"],
                                    "a-file is a file, not a folder"),
        "report on mistyped results": (["report", tmp_path / "typed"], "field 'metrics.macro'"),
        "ledger on garbage": (["ledger", tmp_path / "garbage.sqlite"], "garbage.sqlite"),
    }
    typed = tmp_path / "typed"
    shutil.copytree(finished[0], typed)
    results = json.loads((typed / "results.json").read_text())
    results["metrics"]["macro"] = "high"
    (typed / "results.json").write_text(json.dumps(results))
    (tmp_path / "garbage.sqlite").write_bytes(b"garbage" * 200)
    if os.geteuid() != 0:  # root writes anywhere: the read-only case only means something for users
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        cases["read-only folder"] = (["run", cfg, "--out", ro / "run"], "Permission denied")
    for name, (args, message) in cases.items():
        before = checksums(tmp_path)
        code, err = invoke(args, capsys, monkeypatch)
        assert code == 2 and message in error_line(err), (name, err)
        assert checksums(tmp_path) == before, name
