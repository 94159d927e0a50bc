"""BalDistill and its baselines end to end on the built-in task (tiny student, program teacher)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from domdistill.config import config_from_dict
from domdistill.methods import run_config

TINY = {
    "data": {"path": "builtin", "builtin_size": 200, "max_test_per_domain": 3},
    "student": {"model": "nano"},
    "method": {"name": "baldistill_a", "budget": 98, "stages": 3, "score_max_new_tokens": 16,
               "score_candidates": 8},
    "training": {"epochs": 1, "batch_size": 16, "max_seq_len": 80, "learning_rate": 3e-3,
                 "cpu_threads": 1, "deterministic": True, "save_steps": 2},
    "evaluation": {"max_new_tokens": 16, "bootstrap": 10},
}


def tiny_config(method: str, **method_overrides):
    raw = json.loads(json.dumps(TINY))
    raw["method"].update(name=method, **method_overrides)
    return config_from_dict(raw)


def ledger_rows(run: Path) -> list[tuple]:
    con = sqlite3.connect(run / "ledger.sqlite")
    rows = con.execute("SELECT key, status, charged, domain, stage FROM calls ORDER BY key").fetchall()
    con.close()
    return rows


@pytest.fixture(scope="module")
def baldistill_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "baldistill_a"
    return out, run_config(tiny_config("baldistill_a"), out=out, progress=False)


def test_baldistill_spends_the_budget_in_stages_and_balances(baldistill_run):
    out, results = baldistill_run
    assert results["method"] == "baldistill_a"
    assert results["budget"]["limit"] == 98 and results["budget"]["spent"] == 98
    assert results["budget"]["by_stage"] == [33, 33, 32]
    assert sum(results["budget"]["by_domain"].values()) == 98
    history = results["history"]
    assert [h["stage"] for h in history] == [1, 2, 3]
    # adaptive quotas move toward balanced: the largest domain's share shrinks stage by stage
    top = max(results["dataset"]["domain_counts"], key=results["dataset"]["domain_counts"].get)
    shares = [h["quotas"][top] / sum(h["quotas"].values()) for h in history]
    assert shares[0] > shares[-1]
    state = json.loads((out / "state.json").read_text())
    chosen = [i for s in state["stages"] for ids in s["selected"].values() for i in ids]
    assert len(chosen) == len(set(chosen))  # an input is annotated at most once
    for block in ("per_domain", "macro", "micro", "head", "tail"):
        assert block in results["metrics"]
    assert set(results["head_domains"]) | set(results["tail_domains"]) == set(results["metrics"]["per_domain"])
    assert (out / "config.yaml").is_file() and (out / "students" / "stage-3").is_dir()


def test_tail_domains_get_synthetic_examples(baldistill_run):
    out, results = baldistill_run
    state = json.loads((out / "state.json").read_text())
    synthetic = [ex for ex in state["train"] if ex["metadata"].get("source") == "synthetic"]
    tails = {d for s in state["stages"] for d in s["plan"]["tail"]}
    assert synthetic and {ex["domain"] for ex in synthetic} <= tails
    kinds = {row[0] for row in sqlite3.connect(out / "ledger.sqlite").execute("SELECT kind FROM calls")}
    assert kinds == {"rationale", "synthesis"}


@pytest.mark.parametrize("method,expect_calls,expect_stages", [
    ("random_ft", 0, 1), ("random_ft_cot", 98, 1), ("balance_ft_cot", 98, 1),
    ("duplicate_ft_cot", None, 1), ("zero_shot_cot", 0, 0),
])
def test_single_round_baselines(tmp_path, method, expect_calls, expect_stages):
    results = run_config(tiny_config(method), out=tmp_path / method, progress=False)
    assert results["method"] == method and len(results["history"]) == expect_stages
    spent = results.get("budget", {}).get("spent", 0)
    if expect_calls is not None:
        assert spent == expect_calls
    else:  # duplicates are not paid for: fewer calls than examples
        state = json.loads((tmp_path / method / "state.json").read_text())
        dups = [ex for ex in state["train"] if ex["metadata"].get("source") == "duplicate"]
        assert dups and spent < 98 and spent + len(dups) >= len(state["train"])
    if method == "random_ft":
        state = json.loads((tmp_path / method / "state.json").read_text())
        assert all(not ex.get("rationale") for ex in state["train"])  # labels only


def test_dry_run_plans_without_calling_or_writing(tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    raw = json.loads(json.dumps(TINY))
    raw["output"] = {"dir": str(tmp_path / "never")}
    cfg_path.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, "-m", "domdistill.cli", "run", str(cfg_path), "--dry-run",
                           "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["expected_calls"] == 98 and len(plan["stages"]) == 3
    assert sum(sum(s["quotas"].values()) for s in plan["stages"]) == 98
    assert not (tmp_path / "never").exists()


def test_dry_run_refuses_an_unset_key_variable_as_the_run_would(tmp_path):
    raw = json.loads(json.dumps(TINY))
    raw["teacher"] = {"kind": "openai", "model": "gpt-x", "base_url": "http://127.0.0.1:9/v1",
                      "api_key_env": "DOMDISTILL_SURELY_UNSET_KEY"}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if k != "DOMDISTILL_SURELY_UNSET_KEY"}
    proc = subprocess.run([sys.executable, "-m", "domdistill.cli", "run", str(tmp_path / "cfg.yaml"),
                           "--dry-run"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "environment variable $DOMDISTILL_SURELY_UNSET_KEY holding the API key is not set" in \
        " ".join(proc.stderr.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml"]


def _run_cli(cfg_path: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    return subprocess.Popen([sys.executable, "-m", "domdistill.cli", "run", str(cfg_path), "--out",
                             str(out), *extra], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_kill_during_stage_two_then_resume_matches_uninterrupted(tmp_path, baldistill_run):
    ref_dir, ref = baldistill_run
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "killed"
    proc = _run_cli(cfg_path, out)
    deadline = time.time() + 240
    # wait until stage 1 is recorded and stage 2 has started training, then kill
    while time.time() < deadline:
        state = out / "state.json"
        if state.is_file() and json.loads(state.read_text())["stage"] == 1 and \
                (out / "checkpoints" / "stage-2").is_dir():
            break
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "state.json").read_text())["stage"] == 1  # killed inside stage 2
    resumed = _run_cli(cfg_path, out, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    got = json.loads((out / "results.json").read_text())
    ref_state = json.loads((ref_dir / "state.json").read_text())
    got_state = json.loads((out / "state.json").read_text())
    assert [s["selected"] for s in got_state["stages"]] == [s["selected"] for s in ref_state["stages"]]
    assert ledger_rows(out) == ledger_rows(ref_dir)  # same calls, none charged twice
    assert got["budget"] == ref["budget"]
    assert got["metrics"]["per_domain"] == ref["metrics"]["per_domain"]


@pytest.mark.parametrize("method", ["active_ft_cot", "baldistill_n"])
def test_staged_variants(tmp_path, method):
    results = run_config(tiny_config(method, stages=2), out=tmp_path / method, progress=False)
    assert results["budget"]["spent"] == 98 and results["budget"]["by_stage"] == [49, 49]
    state = json.loads((tmp_path / method / "state.json").read_text())
    stage2 = state["stages"][1]["plan"]["quotas"]
    if method == "baldistill_n":  # naive: the same quota for every domain
        assert max(stage2.values()) - min(stage2.values()) <= 1
    else:  # no balancing and no synthesis
        assert not any(ex["metadata"].get("source") == "synthetic" for ex in state["train"])
