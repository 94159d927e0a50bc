"""What a finished run tells its user, through the real CLI: the outputs kept in
``predictions.jsonl``, the share without a parsable answer and the most frequent answer per
domain, warnings when the student gave no answer or one answer to most inputs, and a label set
with commas given to ``eval`` through a file."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from test_run_folders import BASE, ENV, write_config

REPO = Path(__file__).resolve().parents[1]
# as a user's shell has it: the libraries' progress bars are not switched off beforehand
USER_ENV = {k: v for k, v in ENV.items() if "PROGRESS_BARS" not in k}


def cli(*args, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "domdistill.cli", *map(str, args)], cwd=cwd,
                          env=env or ENV, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("outcome")
    config = write_config(root / "run.yaml", method={"budget": 28, "stages": 2})
    proc = cli("run", config, "--out", root / "run", env=USER_ENV)
    assert proc.returncode == 0, proc.stderr
    return root / "run", proc


def test_the_run_keeps_its_outputs_and_says_what_they_look_like(finished_run) -> None:
    folder, proc = finished_run
    results = json.loads((folder / "results.json").read_text())
    metrics = results["metrics"]
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == metrics["n"] and {"id", "domain", "gold", "pred", "output"} <= set(rows[0])
    for domain, block in metrics["per_domain"].items():
        mine = [r for r in rows if r["domain"] == domain]
        assert len(mine) == block["n"]
        assert block["no_answer"] == sum(r["pred"] is None for r in mine) / len(mine)
        answers = Counter(r["pred"] if r["pred"] is not None else "<no answer>" for r in mine)
        assert block["top_prediction_share"] == max(answers.values()) / len(mine)
        assert answers[block["top_prediction"]] == max(answers.values())
    assert metrics["no_answer"] == sum(r["pred"] is None for r in rows) / len(rows)
    # every warning of results.json reaches the terminal, the output ones pointing at the file
    output_warnings = [w for w in results.get("warnings", []) if "predictions.jsonl" in w]
    assert output_warnings == metrics["warnings"]
    for w in results.get("warnings", []):
        assert w[:60] in proc.stderr.replace("\n", " ")
    assert "evaluating on" in proc.stderr and "training the student on" in proc.stderr
    # head/tail by the shared rule on the training pool, named in the results and the table
    counts = results["dataset"]["domain_counts"]
    mean = sum(counts.values()) / len(counts)
    assert sorted(results["head_domains"]) == sorted(d for d, n in counts.items() if n >= mean)
    assert results["head_tail_rule"] == "tail: domains smaller than the mean domain of the training pool"
    assert "smaller than the mean domain" in proc.stdout


def test_a_log_gets_phase_lines_and_per_phase_seconds_not_library_bars(finished_run) -> None:
    folder, proc = finished_run
    results = json.loads((folder / "results.json").read_text())
    for stage in (1, 2):
        assert f"stage {stage}/2: training the student on" in proc.stderr
        assert f"stage {stage}/2: evaluating on" in proc.stderr
    phases = results["phase_seconds"]
    assert set(phases) == {"score", "teacher", "train", "eval"}
    assert phases["train"] > 0 and phases["eval"] > 0
    assert phases["train"] == pytest.approx(sum(h["seconds"]["train"] for h in results["history"]),
                                            abs=0.05)
    assert sum(phases.values()) <= results["wall_seconds"]
    # the same stderr pipe shows transformers' bar when a plain script loads a saved student
    student = next(p for p in folder.rglob("config.json") if "stage-2" in str(p)).parent
    plain = subprocess.run([sys.executable, "-c", "import sys; from transformers import "
                            "AutoModelForCausalLM as M; M.from_pretrained(sys.argv[1])",
                            str(student)], env=USER_ENV, capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0 and "Loading weights" in plain.stderr, plain.stderr[-2000:]
    assert "Loading weights" not in proc.stderr and "Writing model shards" not in proc.stderr


def test_intervals_of_a_small_run_have_width(finished_run) -> None:
    folder, _ = finished_run
    metrics = json.loads((folder / "results.json").read_text())["metrics"]
    for name, (lo, hi) in metrics["macro_ci"].items():
        assert lo <= metrics["macro"][name] <= hi and hi > lo, name


def test_eval_takes_a_label_set_with_commas_from_a_file(finished_run, tmp_path) -> None:
    folder, _ = finished_run
    labels = ["pathological conditions, signs and symptoms", "neoplasms", "viral diseases"]
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps({"domain": lbl, "input": f"an abstract about {lbl} {i}",
                                        "answer": lbl}) + "\n" for lbl in labels for i in range(2)))
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n\n")
    student = folder / "students" / "stage-2"
    common = ("eval", "--model", student, "--data", data, "--task", "classification",
              "--bootstrap", "20", "--no-perplexity", "--max-new-tokens", "8", "--no-progress")
    split = cli(*common, "--labels", ",".join(labels), "--out", tmp_path / "a.json")
    assert split.returncode == 2 and "not in the label set" in split.stderr
    assert not (tmp_path / "a.json").exists()
    proc = cli(*common, "--labels-file", tmp_path / "labels.txt", "--out", tmp_path / "b.json",
               "--predictions", tmp_path / "p.jsonl")
    assert proc.returncode == 0, proc.stderr
    out = json.loads((tmp_path / "b.json").read_text())["metrics"]
    assert set(out["per_domain"]) == set(labels)
    assert "no answer" in proc.stdout and "most frequent answer" in proc.stdout
    written = json.loads((tmp_path / "b.json").read_text())
    assert written["head_tail_rule"] == "tail: domains smaller than the mean domain of the test set"
    assert sorted(written["head_domains"]) == sorted(labels)  # equal sizes: none is smaller
    both = cli(*common, "--labels", "a", "--labels-file", tmp_path / "labels.txt")
    assert both.returncode == 2 and "--labels or --labels-file" in both.stderr


def test_dry_run_says_what_a_recorded_teacher_cannot_serve_and_how_long_answers_are(tmp_path):
    words = " ".join(f"step{i}" for i in range(60))
    pool = {"big": 12, "mid": 6, "small": 2}
    rows = [{"domain": d, "input": f"a {d} document number {i} about {d}", "answer": d}
            for d, n in pool.items() for i in range(n)]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(
        {"domain": d, "input": f"held-out {d} text", "answer": d}) + "\n" for d in pool))
    recorded = [{"label": r["answer"], "text": r["input"], "rationale": f"{words} so {r['answer']}",
                 "prediction": r["answer"]} for r in rows
                if not r["input"].startswith(("a big document number 0 ", "a big document number 1 "))]
    recorded.append({"gt_choice": "small", "text": "a new small document", "rationale": words,
                     "prediction": "small", "source": "small"})
    (tmp_path / "teacher.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recorded))
    config = write_config(
        tmp_path / "run.yaml", data={"path": "pool.jsonl", "test_path": "test.jsonl",
                                     "task": "classification"},
        teacher={"kind": "recorded", "recorded_paths": ["teacher.jsonl"]},
        method={"budget": 18, "stages": 2}, evaluation={"max_new_tokens": 40},
        training={"max_seq_len": 160})
    proc = cli("run", config, "--dry-run", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    short = {r["domain"]: r for r in plan["recorded_shortfalls"]}
    assert "mid" not in short  # every mid input has its rationale
    assert short["small"]["synthetic_recorded"] == 1
    assert short["small"]["synthetic_planned"] > 1
    big = short["big"]
    assert big["with_rationale"] == big["pool"] - 2 and big["expected_without_record"] >= 1
    answers = plan["prompts"]["answers"]
    assert answers["measured"] == len(recorded) - 1 and answers["median_tokens"] > 40
    assert answers["longer_than"]["evaluation.max_new_tokens"] == 1.0
    text = cli("run", config, "--dry-run", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert "domains it cannot serve in full" in text.stdout and "will find no record" in text.stdout
    assert "longer than evaluation.max_new_tokens (40)" in text.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.jsonl", "run.yaml", "teacher.jsonl",
                                                          "test.jsonl"]


def test_dry_run_estimates_the_students_work_and_with_a_probe_its_seconds(tmp_path) -> None:
    config = write_config(tmp_path / "run.yaml", method={"budget": 28, "stages": 2})
    before = sorted(p.name for p in tmp_path.iterdir())
    plain = cli("run", config, "--dry-run", "--json", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    plan = json.loads(plain.stdout)
    rows = plan["student_compute"]
    quotas = [sum(s["quotas"].values()) for s in plan["stages"]]
    # each stage retrains on everything so far: real inputs plus the tail's synthetic examples
    assert [r["train_examples"] for r in rows] == [quotas[0], quotas[0] + quotas[1]]
    training = BASE["training"]
    for r in rows:
        steps = -(-training["epochs"] * r["train_examples"] // training["batch_size"])
        assert r["train_steps"] == steps
        assert 0 < r["train_tokens"] <= steps * training["batch_size"] * training["max_seq_len"]
    assert rows[0]["scoring_generations"] == 0 < rows[1]["scoring_generations"]
    assert rows[0]["evaluation_generations"] == rows[1]["evaluation_generations"] > 0
    assert "probe_seconds" not in plan and "seconds" not in rows[0]

    probed = cli("run", config, "--dry-run", "--probe", "--json", cwd=tmp_path)
    assert probed.returncode == 0, probed.stderr
    measured = json.loads(probed.stdout)
    probe = measured["probe_seconds"]
    assert probe["train_step"] > 0 and probe["prefill"] > 0 and probe["decode_step"] >= 0
    for r in measured["student_compute"]:
        s = r["seconds"]
        assert s["train"] > 0 and s["evaluate"] > 0
        assert s["total"] == pytest.approx(s["train"] + s["score"] + s["evaluate"], abs=0.02)
    assert measured["student_compute"][1]["seconds"]["score"] > 0

    text = cli("run", config, "--dry-run", cwd=tmp_path)
    assert text.returncode == 0 and "the student's work per stage" in text.stdout
    assert "add --probe to time the student on this machine" in text.stdout
    alone = cli("run", config, "--probe", cwd=tmp_path)
    assert alone.returncode == 2 and "--dry-run" in alone.stderr and "Traceback" not in alone.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_the_run_says_how_many_teacher_answers_the_answer_filter_dropped(tmp_path) -> None:
    rows = [{"domain": d, "input": f"a {d} document number {i} about {d}", "answer": d}
            for d, n in (("big", 8), ("small", 4)) for i in range(n)]
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(
        {"domain": d, "input": f"held-out {d} text", "answer": d}) + "\n" for d in ("big", "small")))
    # the teacher gets every third document wrong
    recorded = [{"label": r["answer"], "text": r["input"], "rationale": "it reads so",
                 "prediction": r["answer"] if i % 3 else "small" if r["answer"] == "big" else "big"}
                for i, r in enumerate(rows)]
    (tmp_path / "teacher.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recorded))
    config = write_config(
        tmp_path / "run.yaml", data={"path": "pool.jsonl", "test_path": "test.jsonl",
                                     "task": "classification"},
        teacher={"kind": "recorded", "recorded_paths": ["teacher.jsonl"]},
        method={"name": "random_ft_cot", "budget": 12, "stages": 1})
    proc = cli("run", config, "--out", tmp_path / "run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    spend = json.loads((tmp_path / "run" / "results.json").read_text())["history"][0]["spend"]
    dropped = sum(spend["dropped_by_filter"].values())
    assert dropped == 4
    assert f"stage 1/1: {dropped} teacher answer(s) dropped by the answer filter" in proc.stderr
    assert f"training the student on {12 - dropped} examples" in proc.stderr


def test_ledger_in_a_narrow_terminal_prints_whole_headers(finished_run) -> None:
    import os
    import pty

    folder, _ = finished_run
    master, slave = pty.openpty()  # a real terminal, 80 columns wide
    proc = subprocess.Popen([sys.executable, "-m", "domdistill.cli", "ledger", folder],
                            stdout=slave, stderr=subprocess.PIPE, env={**ENV, "COLUMNS": "80"})
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    text = re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode())  # colours off
    assert "…" not in text and "spend by domain" in text
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert "rows" in text and "charged" in text
