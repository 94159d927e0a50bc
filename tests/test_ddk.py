"""DDK recipe on real tiny Llamas: the KD trainer's loss, per-interval history, Eq. 1/2 weights
from the measured perplexities, the cached teacher perplexities, fixed-mixture baselines."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import torch

from _ddk_worker import ddk_config, make_teacher
from domdistill.config import StudentConfig
from domdistill.errors import ConfigError
from domdistill.evaluation.perplexity import domain_perplexities
from domdistill.methods import run_config
from domdistill.methods.ddk_parts import lm_text, split_validation
from domdistill.methods.task import load_task
from domdistill.models.loading import load_model_and_tokenizer
from domdistill.models.tiny import build_tiny_model, train_tokenizer
from domdistill.training import domain_weights as dw
from domdistill.training.data import encode_pair, PadCollator
from domdistill.training.divergences import full_logit_kd_loss
from domdistill.training.kd_trainer import kd_loss


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return make_teacher(tmp_path_factory.mktemp("teachers"))


@pytest.fixture(scope="module")
def ddk_run(teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddk") / "run"
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        run_config(ddk_config(teacher, out, "ddk", steps=20, tracking=["tensorboard"]), progress=False)
    (out.parent / "stderr.txt").write_text(log.getvalue())
    return out


def test_a_ddk_run_says_each_phase_and_times_it(ddk_run):
    log = (ddk_run.parent / "stderr.txt").read_text()
    for phase in ("ddk: loading the models", "ddk: teacher perplexity on",
                  "ddk: training 20 steps", "ddk: step 5/20: validation perplexity, domain weights "
                  "updated", "ddk: step 20/20", "ddk: evaluating: test perplexity on"):
        assert phase in log, log
    res = json.loads((ddk_run / "results.json").read_text())
    phases = res["phase_seconds"]
    assert list(phases) == ["load", "teacher_perplexity", "train", "evaluate"]
    assert phases["train"] > 0 and phases["evaluate"] > 0
    assert sum(phases.values()) <= res["wall_seconds"] + 0.01


def _close(a: dict, b: dict, tol: float = 1e-9) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=tol, abs=tol), k


def test_kd_trainer_loss_matches_full_logit_reference(teacher):
    t_model, tok = load_model_and_tokenizer(teacher, dtype="float32")
    student = build_tiny_model("nano", tok, seed=1)
    texts = ["12 + 34 = 46", "sort 3 1 2\nThe answer is: 1 2 3", "abc"]
    batch = PadCollator(tok.pad_token_id)([encode_pair(tok, "", t, 64) for t in texts])
    parts = kd_loss(student, batch, t_model, gamma=0.2, temperature=2.0)
    parts.total.backward()
    got = student.lm_head.weight.grad.clone()
    student.zero_grad()
    s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    with torch.no_grad():
        t_logits = t_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total, ce, kd = full_logit_kd_loss(s_logits[:, :-1], t_logits[:, :-1], batch["labels"][:, 1:],
                                       gamma=0.2, temperature=2.0)
    total.backward()
    assert float(parts.total.detach()) == pytest.approx(float(total.detach()), rel=1e-5)
    assert float(parts.ce) == pytest.approx(float(ce), rel=1e-5)
    assert float(parts.kd) == pytest.approx(float(kd), rel=1e-5)
    torch.testing.assert_close(got, student.lm_head.weight.grad, rtol=1e-4, atol=1e-6)
    # no teacher: plain next-token CE, the same number the model's own loss gives
    ce_only = kd_loss(student, batch, None)
    ref = student(**batch).loss
    assert float(ce_only.total) == pytest.approx(float(ref), rel=1e-5)


def test_divergence_and_its_parameter_reach_the_loss(teacher, tmp_path):
    t_model, tok = load_model_and_tokenizer(teacher, dtype="float32")
    student = build_tiny_model("nano", tok, seed=1)
    batch = PadCollator(tok.pad_token_id)([encode_pair(tok, "", t, 64) for t in ["7 * 8 = 56", "xyz"]])
    with torch.no_grad():
        s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t_logits = t_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    for name, param in (("jsd", 0.3), ("skew_rkl", 0.4), ("tvd", None)):
        parts = kd_loss(student, batch, t_model, divergence=name, divergence_param=param)
        _, _, kd = full_logit_kd_loss(s_logits[:, :-1], t_logits[:, :-1], batch["labels"][:, 1:],
                                      divergence=name, beta=param, lam=param)
        assert float(parts.kd) == pytest.approx(float(kd), rel=1e-5), name
    # a parameter out of range is refused before anything trains, naming the config field
    with pytest.raises(ConfigError, match=r"beta for 'jsd' must be in \[0") as err:
        ddk_config(teacher, tmp_path / "run", "kd", divergence="jsd", divergence_param=1.5)
    assert "method.divergence_param" in str(err.value)
    with pytest.raises(ConfigError, match="offline top-k logits train with forward KL"):
        ddk_config(teacher, tmp_path / "x", "kd", divergence="rkl", teacher_logits="offline")


def test_history_per_interval_and_eq2_weights(ddk_run, teacher):
    res = json.loads((ddk_run / "results.json").read_text())
    hist = res["history"]
    assert [h["step"] for h in hist] == [0, 5, 10, 15, 20]
    domains = set(res["dataset"]["train_counts"])
    for h in hist:
        assert set(h["weights"]) == set(h["student_ppl"]) == set(h["teacher_ppl"]) == domains
        assert sum(h["weights"].values()) == pytest.approx(1.0)
    tppl = hist[0]["teacher_ppl"]
    # interval 0: natural mixture of the training split; r_0 = Eq. 1 of the initial student
    _close(hist[0]["weights"], dw.natural(res["dataset"]["train_counts"]))
    _close(hist[0]["factor"], dw.discrepancy_factor(hist[0]["student_ppl"], tppl))
    for prev, cur in zip(hist, hist[1:]):  # Eq. 2 from the perplexities measured at the boundary
        want = dw.smoothed_update(prev["factor"], cur["student_ppl"], tppl, alpha=0.5)
        _close(cur["factor"], want)
        _close(cur["weights"], want)
        assert min(cur["weights"].values()) >= 0.5 / len(domains) - 1e-12
    assert hist[-1]["tokens"] == res["training"]["tokens"] > 0
    # the perplexities in the history are those of the student: re-measure the saved one
    model, tok = load_model_and_tokenizer(ddk_run / "student", dtype="float32")
    task = load_task(ddk_config(teacher, ddk_run).data)
    by_id = {ex.id: ex for ex in task.pool}
    val_ids = json.loads((ddk_run / "validation.json").read_text())
    texts = {d: [lm_text(by_id[i]) for i in ids] for d, ids in val_ids.items()}
    _close(domain_perplexities(model, tok, texts, 64), hist[-1]["student_ppl"], tol=1e-5)
    # results: per-domain student perplexity, teacher perplexity and ratio on the test set
    for d, m in res["metrics"]["per_domain"].items():
        assert m["ppl_ratio"] == pytest.approx(m["perplexity"] / m["teacher_perplexity"])
    assert res["metrics"]["macro"]["worst_ppl_ratio"] == max(
        m["ppl_ratio"] for m in res["metrics"]["per_domain"].values())
    assert (ddk_run / "domain_weights.png").stat().st_size > 5000
    assert len(res["training"]["losses"]) == 20 and res["training"]["losses"][-1]["kd"] > 0


def test_intervals_loss_and_test_metrics_reach_tensorboard(ddk_run):
    from test_report import _scalars

    res = json.loads((ddk_run / "results.json").read_text())
    s = _scalars(ddk_run / "logs" / "tensorboard")
    for h in res["history"]:  # every interval's weights and ratios, at its step
        for d, w in h["weights"].items():
            assert (h["step"], pytest.approx(w)) in s[f"weight/{d}"]
            assert (h["step"], pytest.approx(h["ratio"][d], rel=1e-5)) in s[f"ppl_ratio/{d}"]
    losses = res["training"]["losses"]  # logged live, step by step, with the CE and KD parts
    assert s["train/loss"] == [(e["step"], pytest.approx(e["loss"], rel=1e-5)) for e in losses]
    assert s["train/kd"] == [(e["step"], pytest.approx(e["kd"], rel=1e-5)) for e in losses]
    assert len(s["train/learning_rate"]) == len(losses)
    macro = res["metrics"]["macro"]
    assert s["eval/macro/worst_ppl_ratio"] == [(20, pytest.approx(macro["worst_ppl_ratio"], rel=1e-5))]


def test_teacher_perplexities_are_cached_and_reused(ddk_run, teacher):
    cache = ddk_run / "teacher_ppl.json"
    data = json.loads(cache.read_text())
    assert len(data) == 2 and {k.split("|")[1] for k in data} == {"val", "test"}
    test_key = next(k for k in data if "|test|" in k)
    domain = sorted(data[test_key])[0]
    data[test_key][domain] = 1234.5  # a value no computation gives: proves the file is read
    cache.write_text(json.dumps(data))
    res = run_config(ddk_config(teacher, ddk_run, "ddk", steps=20), resume=True, progress=False)
    assert res["metrics"]["per_domain"][domain]["teacher_perplexity"] == 1234.5
    assert json.loads(cache.read_text()) == data


def test_validation_split_is_seeded_and_disjoint(teacher):
    task = load_task(ddk_config(teacher, Path("unused")).data)
    train, val = split_validation(list(task.pool), 6, seed=0)
    again = split_validation(list(task.pool), 6, seed=0)
    assert {d: [e.id for e in v] for d, v in val.items()} == {
        d: [e.id for e in v] for d, v in again[1].items()}
    for d, exs in task.pool.by_domain.items():
        n_val = len(val[d])
        assert 1 <= n_val <= max(1, min(6, len(exs) // 5))
        if len(exs) > 1:
            assert not {e.id for e in val[d]} & {e.id for e in train[d]}
            assert n_val + len(train[d]) == len(exs)


@pytest.mark.parametrize("method", ["ddk_wo_fs", "ddk_es", "cpt"])
def test_baseline_weights(method, teacher, tmp_path):
    res = run_config(ddk_config(teacher, tmp_path / method, method, steps=10), progress=False)
    hist = res["history"]
    counts = res["dataset"]["train_counts"]
    assert [h["step"] for h in hist] == [0, 5, 10]
    for h in hist:
        ratio_softmax = dw.discrepancy_factor(h["student_ppl"], h["teacher_ppl"])
        if method == "ddk_wo_fs" and h["step"] > 0:
            _close(h["weights"], ratio_softmax)  # Eq. 1 at every boundary, no history
        elif method == "ddk_es":
            _close(h["weights"], dw.uniform(counts))
        elif method != "ddk_wo_fs":
            _close(h["weights"], dw.natural(counts))
    losses = res["training"]["losses"]
    if method == "cpt":
        assert res["training"]["gamma"] == 0.0 and all("kd" not in e for e in losses)
        assert all(e["loss"] == pytest.approx(e["ce"], rel=1e-4) for e in losses)
    assert all(math.isfinite(m["ppl_ratio"]) for m in res["metrics"]["per_domain"].values())


def test_offline_teacher_logits_train_and_are_reused(teacher, tmp_path):
    cfg = ddk_config(teacher, tmp_path / "off", "kd", steps=10, teacher_logits="offline", topk=8)
    res = run_config(cfg, progress=False)
    manifest = json.loads((tmp_path / "off" / "teacher_logits" / "manifest.json").read_text())
    assert manifest["n"] == sum(res["dataset"]["train_counts"].values())
    assert all(e["kd"] > 0 for e in res["training"]["losses"])


def test_a_shared_teacher_cache_serves_every_run_and_a_depth_pruned_student(teacher, tmp_path):
    shared = tmp_path / "teacher-cache"
    results, mtimes = {}, {}
    for name in ("kd", "ddk"):
        cfg = ddk_config(teacher, tmp_path / name, name, steps=6, teacher_logits="offline",
                         topk=8, teacher_cache=str(shared))
        if name == "ddk":  # the student: the teacher with 1 of its 2 layers kept
            cfg.student = StudentConfig(model=str(teacher), init="depth_pruned", num_layers=1)
        results[name] = run_config(cfg, progress=False)
        mtimes[name] = {p.name: p.stat().st_mtime_ns for p in shared.rglob("*") if p.is_file()}
    caches = sorted(shared.glob("logits-*"))
    assert len(caches) == 1 and mtimes["kd"] == mtimes["ddk"]  # built once, then only read
    assert not (tmp_path / "kd" / "teacher_logits").exists()
    assert not (tmp_path / "kd" / "teacher_ppl.json").exists()
    ppl = json.loads((shared / "teacher_ppl.json").read_text())
    assert sorted(k.split("|")[1] for k in ppl) == ["test", "val"]
    first, second = (results[n]["teacher"]["logits"] for n in ("kd", "ddk"))
    assert first["folder"] == second["folder"] == str(caches[0])
    assert first["tokens"] == second["tokens"] > 0 and first["k"] == 8
    assert first["bytes_per_token"] >= 8 * 4  # k ids (int16) and log-probs (float16) per token
    pruned = results["ddk"]["student"]
    assert pruned["init"] == "depth_pruned" and pruned["num_layers"] == 1
    assert pruned["params"] < results["ddk"]["teacher"]["params"]
    assert json.loads((tmp_path / "ddk" / "student" / "config.json").read_text())[
        "num_hidden_layers"] == 1


def test_incompatible_student_tokenizer_fails_before_training(teacher, tmp_path):
    other = train_tokenizer(["completely different text 123"] * 5, vocab_size=300)
    model = build_tiny_model("nano", other)
    model.save_pretrained(tmp_path / "student")
    other.save_pretrained(tmp_path / "student")
    cfg = ddk_config(teacher, tmp_path / "run")
    cfg.student.model = str(tmp_path / "student")
    with pytest.raises(ConfigError, match="tokenizer"):
        run_config(cfg, progress=False)
    assert not (tmp_path / "run").exists()  # checked before the run folder is made


def test_kd_without_a_model_teacher_is_a_config_error(tmp_path):
    from domdistill.config import config_from_dict

    cfg = config_from_dict({"data": {"path": "builtin", "builtin_size": 100},
                            "method": {"name": "kd"}, "output": {"dir": str(tmp_path / "r")}})
    with pytest.raises(ConfigError, match="teacher.kind"):
        run_config(cfg, progress=False)


@pytest.mark.slow
def test_demo_ddk_beats_kd_on_mean_and_worst_ratio(tmp_path):
    from domdistill.methods.ddk import run_ddk_demo

    runs = run_ddk_demo(tmp_path / "demo")
    kd, ddk = runs["kd"]["metrics"]["macro"], runs["ddk"]["metrics"]["macro"]
    assert ddk["ppl_ratio"] < kd["ppl_ratio"]
    assert ddk["worst_ppl_ratio"] < kd["worst_ppl_ratio"]
    assert runs["kd"]["training"]["steps"] == runs["ddk"]["training"]["steps"]
    assert (tmp_path / "demo" / "ddk" / "domain_weights.png").is_file()


def test_resume_after_training_evaluates_the_trained_student(ddk_run, teacher, tmp_path):
    """A run killed after its student was saved but before results.json: --resume skips training
    and evaluates the saved student, not a fresh one."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(ddk_run, copy)
    want = json.loads((copy / "results.json").read_text())
    (copy / "results.json").unlink()
    got = run_config(ddk_config(teacher, copy, "ddk", steps=20), resume=True, progress=False)
    for d, m in want["metrics"]["per_domain"].items():
        assert got["metrics"]["per_domain"][d]["perplexity"] == pytest.approx(m["perplexity"], rel=1e-6)
    assert got["history"] == want["history"]
