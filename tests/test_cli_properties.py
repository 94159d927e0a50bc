"""Generated hostile input through the real command line: configs with a field set to a value a
user might write by mistake, data files with odd records, and finished run folders with one file
damaged, thrown at ``run``, ``run --resume``, ``eval``, ``report`` and ``ledger``.

Every outcome must be exit 0, or exit 2 with exactly one ``error:`` line and the folders left
as they were (a new run folder not created at all); never a traceback."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domdistill.config import RunConfig

BASE = {
    "data": {"path": "builtin", "builtin_size": 120, "max_test_per_domain": 1},
    "teacher": {"kind": "program"},
    "student": {"model": "nano"},
    "method": {"name": "balance_ft_cot", "budget": 28, "stages": 1},
    "training": {"epochs": 1, "max_steps": 1, "batch_size": 16, "max_seq_len": 64,
                 "cpu_threads": 1},
    "evaluation": {"max_new_tokens": 8, "bootstrap": 0, "perplexity": False},
    "output": {"tracking": []},
}
HOSTILE = [True, False, None, -1, 0, 10**30, 1e308, float("nan"), float("inf"), "", "x",
           "${DOMDISTILL_SURELY_UNSET}", "sk-" + "a1" * 12, "\u200b", "a" * 5000, [], [1, "b"], {},
           {"a": {"b": 1}}, "../../etc/passwd", "builtin"]
FIELDS = [(section, name) for section, info in RunConfig.model_fields.items()
          for name in info.annotation.model_fields] + [("method", "budgett"), ("nosuch", "x")]
CASES = settings(max_examples=30, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def invoke(args: list, capsys, monkeypatch) -> tuple[int, str]:
    from domdistill import cli as entry

    monkeypatch.setattr(sys, "argv", ["domdistill", *map(str, args)])
    monkeypatch.setattr(entry.err_console, "width", 4000)
    capsys.readouterr()
    try:
        entry.main()
        code = 0
    except SystemExit as done:
        code = done.code or 0
    return code, capsys.readouterr().err


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_clean_outcome(code: int, err: str, case: str = "") -> None:
    assert "Traceback" not in err, (case, err[-3000:])
    assert code in (0, 2), (case, code, err[-3000:])
    if code == 2:
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0], (case, err[-3000:])


record = st.fixed_dictionaries({
    "domain": st.sampled_from(["alpha", "beta", "Café", "Cafe\u0301", "a\u200bb", " ", "gamma"]),
    "input": st.text(min_size=0, max_size=20),
    "answer": st.sampled_from(["yes", "no", 1, None, "maybe"]),
})
data_line = record.map(json.dumps) | st.sampled_from([
    '{"domain": "alpha", "input": "x", "answer": NaN}',
    '{"domain": "alpha", "input": "x", "input": "y", "answer": "yes"}',
    '{"domain": "alpha", "input": ' + "[" * 3000 + "]" * 3000 + ', "answer": "no"}',
    "not json", ""])


@CASES
@given(field=st.sampled_from(FIELDS), value=st.sampled_from(HOSTILE),
       data=st.none() | st.lists(data_line, min_size=1, max_size=12))
def test_generated_configs_and_data_through_run(field, value, data, capsys, monkeypatch):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        raw = json.loads(json.dumps(BASE))
        if data is not None:
            (root / "data.jsonl").write_text("\n".join(data) + "\n", encoding="utf-8")
            raw["data"] = {"path": str(root / "data.jsonl"), "task": "classification"}
        raw.setdefault(field[0], {})[field[1]] = value
        (root / "cfg.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
        before = checksums(root)
        code, err = invoke(["run", root / "cfg.yaml", "--out", root / "out"], capsys, monkeypatch)
        assert_clean_outcome(code, err, f"{field} = {value!r:.60}")
        if code == 2:
            assert not (root / "out").exists() and checksums(root) == before


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    from domdistill.config import config_from_dict
    from domdistill.methods import run_config

    root = tmp_path_factory.mktemp("finished")
    raw = {**BASE, "method": {"name": "baldistill_a", "budget": 28, "stages": 2,
                              "score_max_new_tokens": 8, "score_candidates": 4}}
    (root / "cfg.yaml").write_text(yaml.safe_dump(raw))
    run_config(config_from_dict(raw), out=root / "run", progress=False)
    return root / "run", root / "cfg.yaml"


DAMAGE = ["truncate", "garbage", "delete", "empty", "wrong json"]
COMMANDS = ["resume", "report", "ledger", "eval"]


def damage(path: Path, how: str, cut: float) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: int(len(data) * cut)])
    elif how == "garbage":
        at = int(len(data) * cut)
        path.write_bytes(data[:at] + bytes(range(256))[: 64] + data[at + 64:])
    elif how == "delete":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    else:
        path.write_text(json.dumps([1, {"metrics": None}]))


@CASES
@given(pick=st.integers(0, 10**6), how=st.sampled_from(DAMAGE), cut=st.floats(0, 1),
       command=st.sampled_from(COMMANDS))
def test_damaged_run_folders_through_every_command(pick, how, cut, command, finished, capsys,
                                                   monkeypatch):
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(finished[0], run)
        files = sorted(p for p in run.rglob("*") if p.is_file() and p.name != ".owner")
        target = files[pick % len(files)]
        damage(target, how, cut)
        args = {"resume": ["run", finished[1], "--out", run, "--resume"],
                "report": ["report", run],
                "ledger": ["ledger", run],
                "eval": ["eval", "--model", run / "students" / "stage-2", "--data", "builtin",
                         "--builtin-per-domain", "1", "--max-new-tokens", "4", "--bootstrap", "0",
                         "--no-perplexity", "--no-progress", "--out", Path(tmp) / "eval.json"]}[command]
        before = checksums(run)
        code, err = invoke(args, capsys, monkeypatch)
        assert_clean_outcome(code, err, f"{command}: {target.relative_to(run)} damaged by {how}")
        if code == 2:
            assert checksums(run) == before, (target, how)
