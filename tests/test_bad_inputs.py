"""The bad-input corpus (tests/data/bad/) through the command line: every file gives exit code 2
and one message naming what is wrong and where, and no run folder is created or changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

BAD = Path(__file__).resolve().parent / "data" / "bad"
BAD_ENV = "DOMDISTILL_BAD_DATA"

# data file -> (data config for a run, message); `data stats` also runs on those marked `stats`
DATA_CASES: dict[str, tuple[dict, str, bool]] = {
    "malformed_json.jsonl": ({}, "malformed_json.jsonl:3: malformed JSON", True),
    "truncated_last_line.jsonl": ({}, "truncated_last_line.jsonl:2: malformed JSON", True),
    "truncated_line.jsonl.gz": ({}, "truncated_line.jsonl.gz:2: malformed JSON", True),
    "truncated_gzip.jsonl.gz": ({"format": "jsonl"}, "truncated_gzip.jsonl.gz: cannot read file", False),
    "missing_domain.jsonl": ({}, "missing_domain.jsonl:2, field 'domain': required field is missing", True),
    "missing_input.jsonl": ({}, "missing_input.jsonl:2, field 'input': required field is missing", True),
    "empty_domain.jsonl": ({}, "empty_domain.jsonl:2, field 'domain': field is empty", True),
    "wrong_type.jsonl": ({}, "wrong_type.jsonl:2, field 'input': expected a string, got list", True),
    "answer_wrong_type.jsonl": ({}, "answer_wrong_type.jsonl:2, field 'answer': expected a string "
                                    "or number, got object", True),
    "duplicate_ids.jsonl": ({"fields": {"id": "id"}}, "duplicate_ids.jsonl:3, field 'id': "
                            "duplicate id 'e1' (first seen at line 1)", False),
    "empty.jsonl": ({"format": "jsonl"}, "empty.jsonl: no examples found", False),
    "blank_lines.jsonl": ({}, "blank_lines.jsonl: no examples found", True),
    "non_utf8.txt": ({}, "non_utf8.txt:2: not valid UTF-8 text", True),
    "no_tab.txt": ({"format": "r52"}, "no_tab.txt:2: expected 'label<TAB>text'", False),
    "empty_label.txt": ({}, "empty_label.txt:2, field 'label': empty label", True),
    "labels.txt": ({"label_set": ["earn", "acq"]},
                   "labels.txt:3, field 'label': label 'coffee' is not in the label set", False),
    "missing_column.csv": ({}, "missing_column.csv:1, field 'domain': column missing", True),
    "ragged_row.csv": ({}, "ragged_row.csv:3: expected 4 columns as in the header, got 3", True),
    "recorded_unknown_shape.jsonl": ({"format": "recorded"}, "recorded_unknown_shape.jsonl:2: "
                                     "unknown record shape", False),
    "recorded_empty_label.jsonl": ({}, "recorded_empty_label.jsonl:2, field 'label': field is empty", True),
    "huge_line.jsonl.gz": ({}, "huge_line.jsonl.gz:2: line is longer than 16 MiB", True),
    "one_example_domain.jsonl": ({"test_path": None}, "one_example_domain.jsonl, field 'domain': "
                                 "domain(s) with a single example: weather", False),
    "nan_answer.jsonl": ({}, "nan_answer.jsonl:2: NaN is not a JSON value", True),
    "infinity_answer.jsonl": ({}, "infinity_answer.jsonl:3: Infinity is not a JSON value", True),
    "duplicate_key.jsonl": ({}, "duplicate_key.jsonl:2: key 'domain' appears twice in one object", True),
    "invisible_domain.jsonl": ({}, "invisible_domain.jsonl:3, field 'domain': domain name "
                               "'spo\\u200brts' holds an invisible character (U+200B ZERO WIDTH SPACE)", True),
    "unicode_forms.jsonl": ({}, "unicode_forms.jsonl:3, field 'domain': domain 'cafe\u0301' is the "
                            "same name as 'caf\u00e9' (line 1) written in another Unicode form", True),
    "deep_nesting.jsonl": ({}, "deep_nesting.jsonl:2: JSON nested too deeply to read", True),
    "test_domains_not_in_pool.jsonl": ({"path": str(BAD / "one_example_domain.jsonl")},
                                       "test_domains_not_in_pool.jsonl, field 'domain': 1 test "
                                       "domain(s) have no training examples: finance (2)", False),
}

# config file -> message (the file's own name is part of every message but the ones naming data)
CONFIG_CASES: dict[str, str] = {
    "config_unknown_key.yaml": "field 'method.budgett': invalid configuration: unknown key "
                               "'method.budgett' (allowed keys here: name, budget,",
    "config_unknown_section.yaml": "unknown key 'trainer' (allowed keys here: data, teacher,",
    "config_zero_budget.yaml": "'method.budget': Input should be greater than 0 (got 0)",
    "config_negative_budget.yaml": "'method.budget': Input should be greater than 0 (got -50)",
    "config_stages_over_budget.yaml": "stages (5) is larger than budget (3)",
    "config_wrong_type.yaml": "'training.epochs': Input should be a valid number",
    "config_not_a_mapping.yaml": "expected a mapping at the top level, got list",
    "config_invalid_yaml.yaml": "config_invalid_yaml.yaml:3: invalid YAML",
    "config_non_utf8.yaml": "config_non_utf8.yaml: not UTF-8 text",
    "config_unset_env.yaml": "field 'teacher.model': environment variable "
                             "${DOMDISTILL_SURELY_UNSET_MODEL} is not set",
    "config_label_outside_set.yaml": "labels.txt:3, field 'label': label 'coffee' is not in the "
                                     "label set (earn, acq)",
    "config_vocab_mismatch.yaml": "field 'tokenizer': teacher and student tokenizers differ: "
                                  "first differing token id",
    "config_alias_bomb.yaml": "config_alias_bomb.yaml:7: the document expands to more than "
                              "100,000 values (aliases written out)",
    "config_duplicate_key.yaml": "config_duplicate_key.yaml:4: key 'budget' appears twice in one "
                                 "mapping (first at line 3)",
    "config_bool_budget.yaml": "field 'method.budget': expected a number, got the boolean true",
    "config_huge_budget.yaml": "'method.budget': Input should be less than or equal to 1000000000",
    "config_huge_test_set.yaml": "'data.max_test_per_domain': Value error, the built-in task "
                                 "makes 1 to 10,000 test examples per domain",
    "config_preset_typo.yaml": "field 'student.model': unknown model 'nanoo': did you mean 'nano'?",
    "config_key_in_field.yaml": "field 'teacher.api_key_env': this value looks like an API key",
}
# these messages name the file that is wrong instead of the config: the data, the models
NAMED = {"config_label_outside_set.yaml": str(BAD / "labels.txt"),
         "config_vocab_mismatch.yaml": "student.model '",
         "config_preset_typo.yaml": "(tiny presets: nano, micro"}


def flat(text: str) -> str:
    return " ".join(text.split())


def invoke(args: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """``domdistill ARGS`` in this process through the console entry point: (exit code, stderr)."""
    from domdistill import cli

    monkeypatch.setattr(sys, "argv", ["domdistill", *args])
    monkeypatch.setattr(cli.err_console, "width", 4000)  # one line: match whole messages
    with pytest.raises(SystemExit) as done:
        cli.main()
    return done.value.code, flat(capsys.readouterr().err)


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def existing_run(tmp_path: Path) -> Path:
    """A run folder that a bad --resume must leave exactly as it is."""
    out = tmp_path / "existing"
    (out / "checkpoints").mkdir(parents=True)
    (out / "config.yaml").write_text("data: {path: builtin}\n")
    (out / "state.json").write_text(json.dumps({"stage": 1}))
    return out


def test_every_file_of_the_corpus_has_a_case() -> None:
    files = {p.name for p in BAD.iterdir()}
    assert files == set(DATA_CASES) | set(CONFIG_CASES), files ^ (set(DATA_CASES) | set(CONFIG_CASES))
    assert len(files) == 48


@pytest.mark.parametrize("name", sorted(DATA_CASES))
@pytest.mark.parametrize("mode", ["new", "resume"])
def test_bad_data_through_run(name, mode, tmp_path, capsys, monkeypatch) -> None:
    data, message, _ = DATA_CASES[name]
    path = str(BAD / name)
    data = {"path": path, "test_path": path, "task": "classification", **data}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"data": {k: v for k, v in data.items() if v is not None},
                                   "method": {"name": "random_ft", "budget": 10, "stages": 1}}))
    out = existing_run(tmp_path) if mode == "resume" else tmp_path / "out"
    before = snapshot(out) if out.exists() else None
    code, err = invoke(["run", str(cfg), "--out", str(out)] + (["--resume"] if mode == "resume" else []),
                       capsys, monkeypatch)
    assert code == 2 and err.startswith("error: ") and message in err, err
    assert str(BAD) in err  # the full path of the bad file
    assert (snapshot(out) == before) if before is not None else not out.exists()


@pytest.mark.parametrize("name", sorted(n for n, c in DATA_CASES.items() if c[2]))
def test_bad_data_through_data_stats(name, capsys, monkeypatch) -> None:
    before = sorted(BAD.iterdir())
    code, err = invoke(["data", "stats", str(BAD / name)], capsys, monkeypatch)
    assert code == 2 and DATA_CASES[name][1] in err, err
    assert sorted(BAD.iterdir()) == before


@pytest.fixture(scope="module")
def mismatched_models(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny teacher and a tiny student whose tokenizers were trained on different text."""
    from domdistill.data.builtin import builtin_dataset
    from domdistill.models.tiny import create_tiny_model

    root = tmp_path_factory.mktemp("models")
    texts = [ex.input + " " + (ex.rationale or "") for ex in builtin_dataset(size=200)]
    teacher = create_tiny_model(root / "teacher", texts, preset="nano", vocab_size=300)
    student = create_tiny_model(root / "student", [t.upper()[::-1] for t in texts], preset="nano",
                                vocab_size=300)
    return teacher, student


@pytest.mark.parametrize("name", sorted(CONFIG_CASES))
@pytest.mark.parametrize("mode", ["new", "resume"])
def test_bad_config_through_run(name, mode, tmp_path, capsys, monkeypatch, request) -> None:
    monkeypatch.setenv(BAD_ENV, str(BAD))
    if name == "config_vocab_mismatch.yaml":
        teacher, student = request.getfixturevalue("mismatched_models")
        monkeypatch.setenv("DOMDISTILL_BAD_TEACHER", str(teacher))
        monkeypatch.setenv("DOMDISTILL_BAD_STUDENT", str(student))
    capsys.readouterr()  # the fixture's progress bars
    out = existing_run(tmp_path) if mode == "resume" else tmp_path / "out"
    before = snapshot(out) if out.exists() else None
    code, err = invoke(["run", str(BAD / name), "--out", str(out)]
                       + (["--resume"] if mode == "resume" else []), capsys, monkeypatch)
    assert code == 2 and err.startswith("error: ") and CONFIG_CASES[name] in err, err
    assert NAMED.get(name, name) in err
    assert (snapshot(out) == before) if before is not None else not out.exists()


def test_the_installed_command_prints_one_clean_line(tmp_path) -> None:
    """The real console script: no traceback, exit 2, nothing written."""
    exe = Path(sys.executable).with_name("domdistill")
    for args in (["run", str(BAD / "config_unknown_key.yaml"), "--out", str(tmp_path / "out")],
                 ["run", str(BAD / "config_alias_bomb.yaml"), "--out", str(tmp_path / "out")],
                 ["data", "stats", str(BAD / "huge_line.jsonl.gz")]):
        proc = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "COLUMNS": "400"})
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("error: ") and proc.stdout == ""
    assert not (tmp_path / "out").exists()
