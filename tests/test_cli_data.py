"""``domdistill data stats`` on the real data, through the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from domdistill.cli import app

runner = CliRunner()


def stats_json(*args: str) -> dict:
    result = runner.invoke(app, ["data", "stats", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_stats_r52_json(shared_data: Path) -> None:
    out = stats_json(str(shared_data / "reuters-r52" / "r52-train.txt"))
    assert len(out["domains"]) == 52 and out["total"] == 6532
    assert out["domains"]["earn"] == 2840 and out["domains"]["platinum"] == 1
    assert out["imbalance_ratio"] == 2840
    assert out["head"][:2] == ["earn", "acq"] and "platinum" in out["tail"]
    assert len(out["head"]) + len(out["tail"]) == 52
    # the one rule runs and reports use: tail = smaller than the mean domain (6532 / 52)
    assert out["head"] == [d for d, n in out["domains"].items() if n >= 6532 / 52]
    assert out["head_tail_rule"] == "tail: domains smaller than the mean domain"


def test_stats_math_train_json(shared_data: Path) -> None:
    out = stats_json(str(shared_data / "math" / "MATH.tar.gz"), "--split", "train",
                     "--head-share", "0.5")
    assert len(out["domains"]) == 7 and out["total"] == 7500
    assert out["domains"]["algebra"] == 1744 and out["domains"]["precalculus"] == 746
    assert abs(out["imbalance_ratio"] - 1744 / 746) < 1e-9
    assert out["head"] == ["algebra", "intermediate_algebra", "prealgebra"]


def test_stats_table(shared_data: Path) -> None:
    result = runner.invoke(app, ["data", "stats", str(shared_data / "math-500" / "test.jsonl"),
                                 "--format", "jsonl"], env={"COLUMNS": "120"})
    # MATH-500 keys are problem/subject/answer: the default field map names none of them
    assert result.exit_code != 0 and "field 'domain'" in str(result.exception)
    path = str(shared_data / "baldistill-teacher" / "math" / "corpus.jsonl.gz")
    result = runner.invoke(app, ["data", "stats", path], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "counting_and_probability" in result.stdout and "head" in result.stdout
    assert "total 4125" in result.stdout and "imbalance ratio 9.326" in result.stdout


def test_cli_error_is_one_clean_line(tmp_path: Path) -> None:
    bad = Path(__file__).resolve().parent / "data" / "bad" / "malformed_json.jsonl"
    proc = subprocess.run([sys.executable, "-c", "from domdistill.cli import main; main()",
                           "data", "stats", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "malformed_json.jsonl:3: malformed JSON" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_stats_of_a_run_config_counts_its_training_pool_through_its_field_map(tmp_path: Path) -> None:
    rows = [{"topic": t, "text": f"{t} story {i}", "label": t} for t, n in
            (("big", 9), ("mid", 4), ("small", 2)) for i in range(n)]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "test.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (tmp_path / "run.yaml").write_text(
        "data:\n  path: pool.jsonl\n  test_path: test.jsonl\n  task: classification\n"
        "  fields: {domain: topic, input: text, answer: label}\n")
    # from another folder: the config's relative paths resolve against its own folder
    out = stats_json(str(tmp_path / "run.yaml"))
    assert out["domains"] == {"big": 9, "mid": 4, "small": 2}
    assert out["head"] == ["big"] and out["tail"] == ["mid", "small"]
    # the same file without the field map has no `domain` field: an error naming it
    plain = runner.invoke(app, ["data", "stats", str(tmp_path / "pool.jsonl")])
    assert plain.exit_code != 0 and "'domain'" in str(plain.exception), plain.exception
