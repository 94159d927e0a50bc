"""The R52 replay benchmark's pieces on real data: pool and teacher files, a tiny two-method run."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from domdistill.data.loaders import load_dataset
from domdistill.teachers import RecordedTeacher

BENCH = Path(__file__).resolve().parents[1] / "bench" / "r52_replay.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("r52_replay", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_data_keeps_only_recorded_documents(bench, shared_data: Path, tmp_path: Path) -> None:
    info = bench.prepare_data(tmp_path, shared_data, doc_words=40, rationale_words=10)
    pool = [json.loads(line) for line in (tmp_path / "pool.jsonl").read_text().splitlines()]
    records = [json.loads(line) for line in gzip.decompress((tmp_path / "teacher.jsonl.gz")
                                                           .read_bytes()).decode().splitlines()]
    assert info["pool"] == len(pool) and 4500 <= len(pool) < info["train"] == 6532
    assert info["test"] == 2568 and all(len(ex["input"].split()) <= 40 for ex in pool)
    synthetic = [r for r in records if "gt_choice" in r]
    assert len(synthetic) == info["synthetic"] >= 1800 and info["synthetic_domains"] >= 35
    assert all(len(r["rationale"].split()) <= 10 for r in records)
    assert all(r["text"] == r["text"].lower() for r in synthetic)  # normalised like R52
    # the written teacher answers every pool document and nothing else of the training set
    train = load_dataset(shared_data / "reuters-r52" / "r52-train.txt")
    teacher = RecordedTeacher.from_paths([tmp_path / "teacher.jsonl.gz"], match="r52")
    ids = {ex["id"] for ex in pool}
    assert all(teacher.has_rationale(ex.input) == (ex.id in ids) for ex in train)
    assert {d: len(v) for d, v in teacher.synthetic.items()} == info["synthetic_by_domain"]
    with pytest.raises(SystemExit):
        bench.prepare_data(tmp_path, shared_data, doc_words=20, rationale_words=10)


def test_jobs_and_presets(bench) -> None:
    args = bench.parse_args(["--stages", "3", "5", "8", "--methods", "random_ft_cot", "baldistill_a"])
    assert (args.per_class, args.seeds, args.epochs) == (50, [0, 1], 3.0)
    jobs = bench.plan_jobs(args)
    assert sorted({j["key"] for j in jobs}) == ["baldistill_a@K3", "baldistill_a@K5",
                                                "baldistill_a@K8", "random_ft_cot"]
    assert len(jobs) == 8 and jobs[0]["stages"] == 8 and jobs[-1]["method"] == "random_ft_cot"
    quick = bench.parse_args(["--quick"])
    assert (quick.per_class, quick.seeds, quick.test_per_domain) == (10, [0], 10)


@pytest.mark.slow  # a whole replay run; the bench runs it too
def test_tiny_run_reports_scores_calls_and_shortfall(bench, tmp_path: Path, capsys) -> None:
    """Two methods, 30 per class: BalDistill N asks for more synthetic 'tea' documents than were
    recorded; the run goes on and the shortfall is reported, never invented."""
    argv = ["--methods", "random_ft_cot", "baldistill_n", "--per-class", "30", "--stages", "2",
            "--seeds", "0", "--epochs", "0.02", "--jobs", "1", "--stage-eval-per-domain", "1",
            "--score-candidates", "1", "--max-new-tokens", "8", "--bootstrap", "0",
            "--out", str(tmp_path)]
    summary = run_main(bench, argv + ["--test-per-domain", "1"], capsys)
    methods = summary["methods"]
    assert set(methods) == {"random_ft_cot", "baldistill_n"}
    for m in methods.values():
        assert 0 <= m["macro_f1"] <= 100 and 0 <= m["micro_f1"] <= 100
        assert 0 < m["calls"] <= 30 * 52
    assert methods["random_ft_cot"]["calls"] == 30 * 52 and not methods["random_ft_cot"]["shortfall"]
    # tea: 2 real documents + 26 recorded synthetic ones < 30 asked for
    assert methods["baldistill_n"]["shortfall"].get("tea", 0) >= 2
    assert methods["baldistill_n"]["calls"] <= 30 * 52 - sum(methods["baldistill_n"]["shortfall"].values())
    run = tmp_path / "runs" / "baldistill_n-K2-s0"
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["n"] == summary["test"] == 52 and final["student"] == "students/stage-2"
    # a rerun on a larger test subset reuses the finished runs and only scores them again
    stamp = (run / "results.json").stat().st_mtime_ns
    again = run_main(bench, argv + ["--test-per-domain", "2"], capsys)
    assert again["test"] == 52 * 2 - 6  # six topics have a single test document
    assert (run / "results.json").stat().st_mtime_ns == stamp
    assert {m: v["calls"] for m, v in again["methods"].items()} == \
        {m: v["calls"] for m, v in methods.items()}


def run_main(bench, argv: list[str], capsys) -> dict:
    """``bench.main(argv)`` in this process; returns the parsed SUMMARY line (printed last)."""
    threads = torch.get_num_threads()
    try:
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("SUMMARY ")
    return json.loads(lines[-1][len("SUMMARY "):])
