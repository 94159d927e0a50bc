"""Reports over run folders (Markdown, self-contained HTML, PNGs) and experiment tracking.

Run folders are built from real parts: R52's 52 real domain counts, stage quotas from the quota
planner, a real SQLite ledger charged call by call, metrics from the metrics module. Only the
student's predictions are drawn from a seeded generator (the report renders, it does not judge).
"""

from __future__ import annotations

import base64
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from domdistill.data.loaders import load_dataset
from domdistill.data.quotas import plan_stage, stage_budgets
from domdistill.errors import InputError
from domdistill.evaluation.metrics import Scored, compute_metrics
from domdistill.evaluation.report import PLOTS_DIR, default_out, load_run, write_report
from domdistill.evaluation.results import write_results
from domdistill.data.domains import report_head_tail
from domdistill.teachers.ledger import Budget, Ledger, Tags

IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


def _metrics(counts: dict[str, int], head: list[str], tail: list[str], skill: float, seed: int) -> dict:
    rng = random.Random(seed)
    rows = []
    for d, n in counts.items():
        p = min(0.95, skill * (0.3 + 0.15 * np.log1p(n)))
        for i in range(max(2, min(n, 12))):
            ok = rng.random() < p
            rows.append(Scored(f"{d}-{i}", d, d, d if ok else "other", ok))
    return compute_metrics(rows, "classification", head, tail, bootstrap=50, seed=seed)


def make_run(folder: Path, method: str, counts: dict[str, int], budget: int, stages: int,
             policy: str, skill: float, seed: int = 0) -> Path:
    """A BalDistill-shaped run folder: ledger.sqlite charged per domain and stage, results.json."""
    head, tail = report_head_tail(counts)
    history, by_stage = [], []
    pool = dict(counts)
    with Ledger(folder / "ledger.sqlite", Budget(calls=budget)) as led:
        for s, b in enumerate(stage_budgets(budget, stages), start=1):
            plan = plan_stage(policy, b, s, stages, pool, counts)
            for d, q in plan.quotas.items():
                for i in range(q):
                    key = f"{d}:{s}:{i}"
                    led.reserve(key, Tags(domain=d, stage=str(s), kind="rationale"), None, 10)
                    led.complete(key, "rationale", None, 50, 20)
                pool[d] = max(0, pool[d] - q)
            by_stage.append(sum(plan.quotas.values()))
            m = _metrics(counts, head, tail, skill * s / stages, seed + s)
            loss = [[k, 6.0 * np.exp(-k / 30) + 0.5 + 0.05 * np.sin(k)] for k in range(1, 40 + 20 * s)]
            history.append({"stage": s, "quotas": plan.quotas, "head": plan.head, "tail": plan.tail,
                            "examples": b, "train_size": sum(by_stage), "spend": {"real": b},
                            "macro": m["macro"], "micro": m["micro"], "head_metrics": m["head"],
                            "tail_metrics": m["tail"], "loss": loss, "seconds": {"train": 1.0}})
    from domdistill.methods.annotate import ledger_spend
    from domdistill.runs import RunDir

    spend = ledger_spend(RunDir(folder))
    write_results(folder / "results.json", method, m, wall_seconds=12.5,
                  budget={"limit": budget, **spend}, history=history,
                  dataset={"name": "r52", "pool": sum(counts.values()), "test": m["n"],
                           "domains": len(counts), "domain_counts": counts},
                  student={"model": "micro"}, teacher={"model": "recorded"},
                  head_domains=head, tail_domains=tail, answer_filter=True)
    return folder


def make_ddk_run(folder: Path, counts: dict[str, int], intervals: int = 12) -> Path:
    """A DDK-shaped run folder: one history entry per interval (step, weights, perplexities)."""
    head, tail = report_head_tail(counts)
    doms = list(counts)
    history = []
    w = np.full(len(doms), 1 / len(doms))
    for k in range(intervals):
        student = {d: 8.0 / (1 + 0.1 * k) * (1 + 2 * (d in tail)) for d in doms}
        teacher = {d: 3.0 for d in doms}
        ratio = np.array([student[d] / teacher[d] for d in doms])
        w = 0.5 * w + 0.5 * ratio / ratio.sum()
        history.append({"step": 10 * (k + 1), "weights": dict(zip(doms, w.tolist())),
                        "student_ppl": student, "teacher_ppl": teacher, "loss": 3.0 / (1 + 0.2 * k)})
    m = _metrics(counts, head, tail, 0.8, 99)
    write_results(folder / "results.json", "ddk", m, wall_seconds=30.0, history=history,
                  dataset={"name": "r52", "domain_counts": counts}, head_domains=head, tail_domains=tail)
    return folder


@pytest.fixture(scope="module")
def r52_counts(shared_data: Path) -> dict[str, int]:
    return load_dataset(shared_data / "reuters-r52" / "r52-train.txt").counts()


@pytest.fixture(scope="module")
def r52_runs(tmp_path_factory, r52_counts) -> list[Path]:
    root = tmp_path_factory.mktemp("r52runs")
    return [make_run(root / "baldistill_a", "baldistill_a", r52_counts, 2600, 5, "adaptive", 1.0),
            make_run(root / "random_ft_cot", "random_ft_cot", r52_counts, 2600, 1, "random", 0.9),
            make_ddk_run(root / "ddk", r52_counts)]


@pytest.fixture(scope="module")
def r52_report(r52_runs) -> Path:
    return write_report(r52_runs)


def test_report_writes_md_html_and_every_linked_png(r52_report: Path, r52_runs) -> None:
    out = r52_report.parent
    assert out == r52_runs[0].parent  # default: the runs' common parent
    md = r52_report.read_text()
    links = IMAGE_LINK.findall(md)
    assert sorted(Path(link).name for link in links) == sorted(
        ["domain_scores.png", "budget.png", "stages.png", "ddk.png", "loss.png"])
    for link in links:
        png = out / link
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = imread(png)
        assert img.shape[0] > 300 and img[..., :3].std() > 0.05  # drawn, not blank
    assert (out / "report.html").is_file()
    assert not list(out.glob(".report_plots.*"))  # no temp folder left behind


def test_html_is_self_contained(r52_report: Path) -> None:
    page = (r52_report.parent / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:|[^"'d#])""", page)
    assert "url(" not in page and "<script" not in page and "<link" not in page
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    files = sorted((r52_report.parent / PLOTS_DIR).glob("*.png"))
    assert len(embedded) == len(files) == 5
    assert {base64.b64decode(e) for e in embedded} == {f.read_bytes() for f in files}


def test_scores_table_matches_results(r52_report: Path, r52_runs) -> None:
    md = r52_report.read_text()
    for folder in r52_runs:
        res = json.loads((folder / "results.json").read_text())
        macro, ci = res["metrics"]["macro"]["accuracy"], res["metrics"]["macro_ci"]["accuracy"]
        row = next(line for line in md.splitlines() if line.startswith(f"| {res['method']} | {macro:.3f}"))
        assert f"[{ci[0]:.3f}, {ci[1]:.3f}]" in row
        spent = f"{res['budget']['spent']} / {res['budget']['limit']}" if "budget" in res else "| - |"
        assert spent in row
    # per-domain table: one row per R52 class
    assert sum(1 for line in md.splitlines() if re.match(r"\| \w[\w-]* \| \d+ \| \d+ \| (head|tail) \|", line)) == 52


def test_by_domain_figures_grow_with_the_domain_count(tmp_path: Path, r52_report: Path) -> None:
    small = {"a": 300, "b": 120, "c": 40, "d": 12, "e": 5}
    run = make_run(tmp_path / "small", "baldistill_a", small, 60, 3, "adaptive", 1.0)
    write_report([run])
    h_small = imread(run / PLOTS_DIR / "budget.png").shape[0]
    h_r52 = imread(r52_report.parent / PLOTS_DIR / "budget.png").shape[0]
    assert h_r52 > 2 * h_small  # 52 rows get room: labels never overlap
    assert not (run / PLOTS_DIR / "ddk.png").exists()  # no DDK run, no DDK figure
    assert "DDK" not in (run / "report.md").read_text()


def test_perplexity_runs_show_the_teacher_gap(tmp_path: Path) -> None:
    """DDK-style results (perplexity only, ratios to the teacher) and a teacherless CPT run."""
    counts = {"a": 400, "b": 60, "c": 9}
    runs = []
    for name, teacher in (("ddk", True), ("cpt", False)):
        run = make_ddk_run(tmp_path / name, counts)
        res = json.loads((run / "results.json").read_text())
        res["method"] = name
        per = {d: {"n": 5, "perplexity": 2.0 + i, **({"ppl_ratio": 1.5 + i} if teacher else {})}
               for i, d in enumerate(counts)}

        def agg(ds: list[str]) -> dict:
            keys = ["perplexity", "ppl_ratio"] if teacher else ["perplexity"]
            return {"domains": ds, **{k: float(np.mean([per[d][k] for d in ds])) for k in keys}}

        res["metrics"] = {"n": 15, "per_domain": per, "macro": agg(list(counts)),
                          "micro": {"perplexity": 2.5}, "head": agg(["a"]), "tail": agg(["b", "c"])}
        for h in res["history"]:
            h["teacher_ppl"] = h["teacher_ppl"] if teacher else None
        (run / "results.json").write_text(json.dumps(res))
        runs.append(run)
    md = write_report(runs, tmp_path / "rep").read_text()
    assert "## Scores (perplexity)" in md and "Brackets" not in md and "teacher calls" not in md
    assert re.search(r"\| ddk \| 3\.000 \(2\.50x\) \| 2\.500 \| 2\.000 \(1\.50x\) \|", md)
    assert re.search(r"\| cpt \| 3\.000 \| 2\.500 \| 2\.000 \|", md)
    assert (tmp_path / "rep" / PLOTS_DIR / "ddk.png").is_file()


def test_spend_per_domain_and_stage_comes_from_the_ledger(r52_runs) -> None:
    run = load_run(r52_runs[0])
    per_domain = {d: sum(v.values()) for d, v in run.spend_by_domain_stage.items()}
    assert per_domain == {d: n for d, n in run.budget["by_domain"].items() if n}
    stages = run.budget["by_stage"]
    assert [sum(v.get(s, 0) for v in run.spend_by_domain_stage.values()) for s in range(1, 6)] == stages


def test_default_out_and_explicit_out(tmp_path: Path, r52_runs) -> None:
    assert default_out([r52_runs[0]]) == r52_runs[0].resolve()
    assert default_out(r52_runs[:2]) == r52_runs[0].parent.resolve()
    md = write_report([r52_runs[1] / "results.json"], tmp_path / "elsewhere")
    assert md == tmp_path / "elsewhere" / "report.md" and md.is_file()


def test_bad_input_names_the_file_and_writes_nothing(tmp_path: Path, r52_runs) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"empty/results\.json.*no results\.json"):
        write_report([r52_runs[0], empty], tmp_path / "out1")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "results.json").write_text('{"method": "x",\n  "metrics": {,}\n}')
    with pytest.raises(InputError, match=r"broken/results\.json:2.*not valid JSON"):
        write_report([broken], tmp_path / "out2")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "results.json").write_text('{"method": "x", "wall_seconds": 1, "metrics": {}}')
    with pytest.raises(InputError, match="metrics.per_domain"):
        write_report([partial], tmp_path / "out3")
    for k in (1, 2, 3):
        assert not (tmp_path / f"out{k}").exists() or not any((tmp_path / f"out{k}").iterdir())
    assert not (broken / "report.md").exists()


def test_cli_report_and_clean_error(tmp_path: Path, r52_runs) -> None:
    ok = subprocess.run([sys.executable, "-m", "domdistill.cli", "report", str(r52_runs[0]),
                         str(r52_runs[2]), "--out", str(tmp_path / "rep")],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "rep" / "report.html").is_file() and (tmp_path / "rep" / PLOTS_DIR / "ddk.png").is_file()
    bad = subprocess.run([sys.executable, "-m", "domdistill.cli", "report", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "nope" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_html_renders_in_headless_chromium(tmp_path: Path, r52_report: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed")
    shot = tmp_path / "shot.png"
    html = r52_report.parent / "report.html"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                        "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                        f"--screenshot={shot}", "--window-size=1200,2000", html.as_uri()],
                       capture_output=True, timeout=180, check=True)
    img = imread(shot)[..., :3]
    assert img.shape[:2] == (2000, 1200)
    assert img.std() > 0.05  # not a blank page
    # the first figure is on screen: a band of rows well below the tables holds many colours
    lower = img[1000:]
    assert len(np.unique((lower * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50


# -- experiment tracking -------------------------------------------------------------------------
def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_tracker_writes_tensorboard_scalars(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from domdistill.evaluation.tracking import Tracker

    metrics = _metrics({"big": 200, "small": 8}, ["big"], ["small"], 1.0, 3)
    record = {"plan": {"quotas": {"big": 30, "small": 12}}, "spend": {"real": 38, "synthetic": 4,
              "dropped_by_filter": {"big": 1}}, "examples": 41, "train_size": 41,
              "training": [[1, 4.0], [2, 3.5], [3, 3.1]], "metrics": metrics}
    with Tracker(tmp_path, ["tensorboard"]) as tr:
        tr.log_stage(1, record)
        tr.log_interval(20, {"big": 0.3, "small": 0.7}, {"big": 4.0, "small": 9.0}, {"big": 2.0, "small": 3.0})
        tr.log_budget({"spent": 42, "limit": 50, "by_domain": {"big": 30, "small": 12}}, step=1)
    s = _scalars(tmp_path / "logs" / "tensorboard")
    assert s["eval/macro/accuracy"] == [(1, pytest.approx(metrics["macro"]["accuracy"]))]
    assert s["eval/domain/small/accuracy"][0][1] == pytest.approx(metrics["per_domain"]["small"]["accuracy"])
    assert s["quota/small"] == [(1, 12.0)] and s["spend/synthetic"] == [(1, 4.0)]
    assert [v for _, v in s["train/loss_stage_1"]] == pytest.approx([4.0, 3.5, 3.1])
    assert s["weight/small"] == [(20, pytest.approx(0.7))]
    assert s["ppl_ratio/small"] == [(20, pytest.approx(3.0))]
    assert s["budget/domain/big"] == [(1, 30.0)]


def test_tracker_choice_follows_the_config(tmp_path: Path) -> None:
    from domdistill.config import config_from_dict
    from domdistill.errors import ConfigError
    from domdistill.evaluation.tracking import Tracker, available

    off = Tracker.from_config(config_from_dict({"output": {"tracking": []}}), tmp_path / "off")
    off.log({"x": 1.0}, step=1)
    off.close()
    assert not off.active and not (tmp_path / "off" / "logs").exists()
    default = Tracker.from_config(config_from_dict({}), tmp_path / "default")
    assert default.backends == (["tensorboard"] if available("tensorboard") else [])
    default.close()
    with pytest.raises(ConfigError, match="output.tracking"):
        config_from_dict({"output": {"tracking": ["mlflow"]}})
    if not available("wandb"):
        with pytest.raises(ConfigError, match="'wandb' is not installed"):
            Tracker.from_config(config_from_dict({"output": {"tracking": ["wandb"]}}), tmp_path / "w")


def test_real_baldistill_run_is_tracked_and_reported(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from domdistill.config import config_from_dict
    from domdistill.methods import run_config

    cfg = config_from_dict({
        "data": {"path": "builtin", "builtin_size": 150, "max_test_per_domain": 2},
        "student": {"model": "nano"},
        "method": {"name": "baldistill_a", "budget": 42, "stages": 2, "score_max_new_tokens": 8,
                   "score_candidates": 4},
        "training": {"epochs": 1, "batch_size": 16, "max_seq_len": 64, "cpu_threads": 1},
        "evaluation": {"max_new_tokens": 8, "bootstrap": 10},
        "output": {"dir": str(tmp_path / "run"), "tracking": ["tensorboard"]}})
    results = run_config(cfg)
    s = _scalars(tmp_path / "run" / "logs" / "tensorboard")
    assert [v for _, v in s["eval/macro/accuracy"]] == pytest.approx(
        [h["macro"]["accuracy"] for h in results["history"]])
    assert {k.split("/")[1] for k in s if k.startswith("quota/")} == set(results["dataset"]["domain_counts"])
    md = write_report([tmp_path / "run"])
    assert md == (tmp_path / "run" / "report.md").resolve()
    assert {p.name for p in (tmp_path / "run" / PLOTS_DIR).glob("*.png")} == {
        "domain_scores.png", "budget.png", "stages.png", "loss.png"}
    text = md.read_text()
    timing = text[text.index("## Where the time went"):]
    assert "| run | part | score (s) | teacher (s) | train (s) | eval (s) |" in timing
    for h in results["history"]:  # one row per stage, then the run's total
        assert f"| stage {h['stage']} | " in timing and h["seconds"]["train"] > 0
    total = f"{results['phase_seconds']['train']:,.1f}"
    assert any(line.split(" | ")[1:2] == ["all"] and total in line for line in timing.splitlines())


# -- the user guide ------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def test_configuration_reference_is_up_to_date() -> None:
    proc = subprocess.run([sys.executable, str(DOCS / "gen_config_reference.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from domdistill.config import RunConfig

    text = (DOCS / "configuration.md").read_text()
    for section, field in RunConfig.model_fields.items():
        for key in field.annotation.model_fields:
            assert f"| `{key}` |" in text, f"{section}.{key} missing"


def test_every_yaml_config_in_the_guide_is_valid() -> None:
    import yaml

    from domdistill.config import config_from_dict

    blocks = [(md.name, b) for md in sorted(DOCS.glob("*.md"))
              for b in re.findall(r"```yaml\n(.*?)```", md.read_text(), re.S)]
    assert len(blocks) >= 5
    for name, block in blocks:
        config_from_dict(yaml.safe_load(block), source=name)


def test_guide_links_and_images_resolve() -> None:
    for md in [REPO / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", md.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (md.parent / target).exists(), f"{md.name}: broken link {target}"


def test_accelerate_configs_load() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {f.stem: load_config_from_file(str(f)).distributed_type.value
             for f in sorted((REPO / "examples" / "accelerate").glob("*.yaml"))}
    assert kinds == {"fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}


def test_report_takes_a_folder_of_runs_and_the_shells_glob_over_it(tmp_path: Path, r52_runs) -> None:
    """``domdistill report runs/demo`` and ``domdistill report runs/demo/*``: the runs inside are
    reported, a report file and an unfinished run are skipped with a note."""
    import shutil

    runs = tmp_path / "runs"
    for run in r52_runs[:2]:
        shutil.copytree(run, runs / run.name)
    (runs / "report.html").write_text("<html>an earlier report</html>")
    (runs / "unfinished").mkdir()
    (runs / "unfinished" / "config.yaml").write_text("method: {name: kd}\n")
    for args in ([str(runs)], sorted(str(p) for p in runs.iterdir())):
        done = subprocess.run([sys.executable, "-m", "domdistill.cli", "report", *args, "--out",
                               str(tmp_path / "rep")], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        notes = [line for line in done.stderr.splitlines() if line.startswith("note: ")]
        skipped = {"unfinished"} if len(args) == 1 else {"unfinished", "report.html"}
        assert {Path(n.split(":")[1].strip()).name for n in notes} == skipped, done.stderr
        text = (tmp_path / "rep" / "report.md").read_text()
        assert "baldistill_a" in text and "random_ft_cot" in text
    empty = subprocess.run([sys.executable, "-m", "domdistill.cli", "report", str(runs / "unfinished")],
                           capture_output=True, text=True, timeout=120)
    assert empty.returncode == 2 and "no finished run among" in empty.stderr
