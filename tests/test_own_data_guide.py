"""docs/own-data.md followed as written, from a folder outside the checkout: the files it makes,
the counts, plan and run it shows are what the commands print."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_run_folders import ENV

REPO = Path(__file__).resolve().parents[1]
PAGE = (REPO / "docs" / "own-data.md").read_text(encoding="utf-8")
EXAMPLE = REPO / "examples" / "own-data"


def cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "domdistill.cli", *map(str, args)], cwd=cwd,
                          env=ENV, capture_output=True, text=True, timeout=600)


@pytest.fixture()
def own_folder(tmp_path: Path, shared_data: Path) -> Path:
    made = subprocess.run([sys.executable, EXAMPLE / "make_files.py", shared_data], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    for line in made.stdout.splitlines():  # "pool.jsonl: 111 lines", as the page shows
        assert line in PAGE, line
    shutil.copy(EXAMPLE / "baldistill.yaml", tmp_path)
    config_block = PAGE.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert config_block in (EXAMPLE / "baldistill.yaml").read_text()
    return tmp_path


def test_the_guide_s_counts_and_plan_are_what_the_commands_print(own_folder: Path) -> None:
    stats = cli("data", "stats", "baldistill.yaml", "--json", cwd=own_folder)
    assert stats.returncode == 0, stats.stderr
    counts = json.loads(stats.stdout)["domains"]
    assert counts == {"earn": 60, "acq": 30, "trade": 12, "coffee": 6, "gold": 3}
    for domain, n in counts.items():
        assert f"│ {domain:<6} │ {n:>5} │" in PAGE
    plan = cli("run", "baldistill.yaml", "--dry-run", "--json", cwd=own_folder)
    assert plan.returncode == 0, plan.stderr
    got = json.loads(plan.stdout)
    assert f"expected teacher calls: {got['expected_calls']} (budget 40); synthetic examples: " \
           f"{got['synthetic_examples']}" in PAGE
    assert got["recorded_shortfalls"] == [] and "every planned request has a record" in PAGE
    for row in got["student_compute"]:
        assert (f"│     {row['stage']} │ {row['train_examples']:>8} │ {row['train_tokens']:>7,} │ "
                f"{row['scoring_generations']:>6} │") in PAGE
    assert sorted(p.name for p in own_folder.iterdir()) == [
        "baldistill.yaml", "pool.jsonl", "teacher.jsonl", "test.jsonl"]


@pytest.mark.slow
def test_the_guide_s_run_says_what_the_page_shows(own_folder: Path) -> None:
    run = cli("run", "baldistill.yaml", cwd=own_folder)
    assert run.returncode == 0, run.stderr
    for line in run.stderr.splitlines():
        if "dropped by the answer filter" in line or "training the student on" in line:
            assert line.split("] ", 1)[1] in PAGE, line
    results = json.loads((own_folder / "runs" / "baldistill" / "results.json").read_text())
    assert results["budget"]["spent"] == 40
