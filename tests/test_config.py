"""Run config: YAML loading, ${VAR} expansion, unknown keys named by dotted path, value checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from domdistill.config import RunConfig, config_from_dict, load_config, save_config
from domdistill.errors import ConfigError


def write(tmp_path, text: str):
    p = tmp_path / "run.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_and_sections_load(tmp_path):
    cfg = load_config(write(tmp_path, "method:\n  name: baldistill_n\n  budget: 520\n"))
    assert isinstance(cfg, RunConfig)
    assert cfg.method.name == "baldistill_n" and cfg.method.budget == 520 and cfg.method.stages == 5
    assert cfg.teacher.kind == "program" and cfg.student.model == "tiny"


def test_unknown_key_names_dotted_path_and_allowed_keys(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "teacher:\n  kind: openai\n  modle: gpt-4o\n"))
    msg = str(e.value)
    assert "teacher.modle" in msg and "run.yaml" in msg
    assert "model" in msg and "base_url" in msg  # the allowed keys are listed
    assert e.value.field == "teacher.modle"


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'trainer'.*allowed keys here: data, teacher"):
        load_config(write(tmp_path, "trainer:\n  epochs: 3\n"))


def test_env_expansion_and_unset_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("DD_TEST_URL", "http://127.0.0.1:9999/v1")
    cfg = load_config(write(tmp_path, "teacher:\n  base_url: ${DD_TEST_URL}\n"))
    assert cfg.teacher.base_url == "http://127.0.0.1:9999/v1"
    monkeypatch.delenv("DD_TEST_URL")
    with pytest.raises(ConfigError, match=r"\$\{DD_TEST_URL\} is not set") as e:
        load_config(write(tmp_path, "teacher:\n  base_url: ${DD_TEST_URL}\n"))
    assert e.value.field == "teacher.base_url"


@pytest.mark.parametrize("text,needle", [
    ("method:\n  budget: 0\n", "method.budget"),
    ("method:\n  budget: -5\n", "method.budget"),
    ("method:\n  budget: 3\n  stages: 5\n", "stages (5) is larger than budget (3)"),
    ("method:\n  name: baldistil_a\n", "method.name"),
    ("training:\n  learning_rate: fast\n", "training.learning_rate"),
])
def test_bad_values_are_named(tmp_path, text, needle):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert needle in str(e.value)


def test_yaml_syntax_error_has_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "method:\n  name: [unclosed\n  budget: 3\n"))
    assert e.value.line is not None and "run.yaml" in str(e.value)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        config_from_dict(["a", "b"])  # type: ignore[arg-type]


def test_overrides_and_round_trip(tmp_path):
    cfg = load_config(write(tmp_path, "method:\n  budget: 100\n"), {"method.budget": 200, "student.lora": True})
    assert cfg.method.budget == 200 and cfg.student.lora
    out = tmp_path / "saved.yaml"
    save_config(cfg, out)
    assert load_config(out) == cfg
    assert "api_key_env" in yaml.safe_load(out.read_text())["teacher"]


def test_example_tiny_config_is_the_demo():
    from pathlib import Path

    from domdistill.methods.demo import DEMO_BALDISTILL

    example = load_config(Path(__file__).resolve().parents[1] / "examples" / "tiny-baldistill.yaml")
    demo = config_from_dict(DEMO_BALDISTILL)
    for section in ("data", "teacher", "student", "method", "training", "evaluation"):
        assert getattr(example, section) == getattr(demo, section), section


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).resolve().parents[1] / "examples").glob("*.yaml")))
def test_every_example_config_loads(name):
    cfg = load_config(Path(__file__).resolve().parents[1] / "examples" / name)
    assert cfg.method.name and cfg.output.dir


def _project(tmp_path: Path) -> Path:
    """A user's project: data in data/, the config in configs/ naming it as ../data/..."""
    rows = [{"domain": d, "input": f"{d} text number {i}", "answer": d}
            for d in ("alpha", "beta", "gamma") for i in range(8)]
    (tmp_path / "project" / "data").mkdir(parents=True)
    (tmp_path / "project" / "data" / "train.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "project" / "configs").mkdir()
    config = tmp_path / "project" / "configs" / "run.yaml"
    config.write_text("data:\n  path: ../data/train.jsonl\n  task: classification\n"
                      "teacher:\n  kind: openai\n  model: some-model\n"
                      "  base_url: http://127.0.0.1:9/v1\n"
                      "method:\n  budget: 6\n  stages: 2\n")
    (tmp_path / "elsewhere").mkdir()
    return config


def test_paths_in_a_config_resolve_against_its_folder(tmp_path, monkeypatch):
    config = _project(tmp_path)
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = load_config(config)
    assert cfg.data.path == str(tmp_path / "project" / "data" / "train.jsonl")
    assert cfg.student.model == "tiny" and cfg.output.dir == "runs/run"  # names, not paths
    given = load_config(config, {"data.test_path": "test.jsonl", "student.model": "./m.gguf"})
    assert given.data.test_path == str(tmp_path / "elsewhere" / "test.jsonl")  # --set: the cwd
    assert given.student.model == str(tmp_path / "elsewhere" / "m.gguf")
    save_config(cfg, tmp_path / "saved.yaml")  # the saved copy works from any folder
    assert load_config(tmp_path / "saved.yaml").data.path == cfg.data.path


def test_cli_dry_run_from_another_folder(tmp_path):
    import subprocess
    import sys

    config = _project(tmp_path)
    cli = [sys.executable, "-c", "from domdistill.cli import main; main()", "run", str(config),
           "--dry-run"]
    env = {**os.environ, "OPENAI_API_KEY": "sk-dry-run-checks-the-variable"}
    proc = subprocess.run([*cli, "--json"], cwd=tmp_path / "elsewhere", capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "calls" in proc.stdout and "Traceback" not in proc.stderr
    proc = subprocess.run([*cli, "--set", "data.test_path=../missing.jsonl"],
                          cwd=tmp_path / "elsewhere", capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{tmp_path / 'missing.jsonl'}: file or folder does not exist" in proc.stderr
    assert list((tmp_path / "elsewhere").iterdir()) == []  # nothing written
