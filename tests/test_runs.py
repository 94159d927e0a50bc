"""Run folders are never overwritten by accident; results.json follows the contract."""

from __future__ import annotations

import json

import pytest

from domdistill.errors import InputError, RunFolderError
from domdistill.evaluation.results import read_results, write_results
from domdistill.runs import prepare_run_dir
from domdistill.training import checkpoints as ck

METRICS = {"per_domain": {"a": {"n": 3, "accuracy": 1.0}}, "macro": {"accuracy": 1.0},
           "micro": {"accuracy": 1.0}, "head": {"accuracy": 1.0}, "tail": {}}


def test_new_folder_and_refusals(tmp_path):
    run = prepare_run_dir(tmp_path / "r")
    assert run.logs.is_dir() and run.checkpoints.is_dir() and not run.resumed
    prepare_run_dir(tmp_path / "r")  # still empty apart from our folders: fine
    run.config.write_text("x: 1\n")
    with pytest.raises(RunFolderError, match="--overwrite"):
        prepare_run_dir(tmp_path / "r")
    assert run.config.read_text() == "x: 1\n"
    with pytest.raises(RunFolderError, match="not both"):
        prepare_run_dir(tmp_path / "r", overwrite=True, resume=True)
    with pytest.raises(RunFolderError, match="nothing to resume"):
        prepare_run_dir(tmp_path / "missing", resume=True)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not a run folder"):
        prepare_run_dir(tmp_path / "junk", resume=True)
    assert (tmp_path / "junk" / "notes.txt").exists()


def test_overwrite_and_resume(tmp_path):
    run = prepare_run_dir(tmp_path / "r")
    run.config.write_text("x: 1\n")
    good = run.checkpoints / "checkpoint-4"
    good.mkdir()
    (good / "model.safetensors").write_bytes(b"w" * 10)
    ck.write_manifest(good, 4)
    bad = run.checkpoints / "checkpoint-8"  # newer but half-written
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"w" * 3)
    resumed = prepare_run_dir(tmp_path / "r", resume=True)
    assert resumed.resumed and resumed.config.exists()
    assert resumed.latest_checkpoint() == good
    # a manifest whose files were truncated afterwards is not complete either
    ck.write_manifest(bad, 8)
    assert resumed.latest_checkpoint() == bad
    (bad / "model.safetensors").write_bytes(b"w")
    assert resumed.latest_checkpoint() == good
    fresh = prepare_run_dir(tmp_path / "r", overwrite=True)
    assert not fresh.config.exists() and fresh.latest_checkpoint() is None


def test_prune_keeps_newest_complete(tmp_path):
    for step in (2, 4, 6, 8):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        (d / "f").write_text("x")
        if step != 8:
            ck.write_manifest(d, step)
    ck.save_method_state(tmp_path / "checkpoint-6", {"stage": 2, "weights": [0.5, 0.5]})
    ck.prune(tmp_path, keep=2)
    assert [p.name for p in ck.checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-6"]
    assert ck.resume_point(tmp_path)[1] == {"stage": 2, "weights": [0.5, 0.5]}


def test_results_contract(tmp_path):
    out = tmp_path / "results.json"
    budget = {"limit": 10, "spent": 7, "by_domain": {"a": 7}, "by_stage": [4, 3]}
    written = write_results(out, "baldistill_a", METRICS, wall_seconds=1.23456, budget=budget,
                            dataset={"name": "builtin"}, student={"model": "tiny"})
    data = read_results(out)
    assert data == written == json.loads(out.read_text())
    assert data["budget"]["spent"] == 7 and data["wall_seconds"] == 1.235 and data["history"] == []
    with pytest.raises(ValueError):
        write_results(tmp_path / "x.json", "kd", {"per_domain": {}}, wall_seconds=1)
    assert not (tmp_path / "x.json").exists()
    (tmp_path / "bad.json").write_text('{"method": "kd",\n "metrics": }')
    with pytest.raises(InputError, match="bad.json:2"):
        read_results(tmp_path / "bad.json")
