"""Per-domain metrics agree with scikit-learn and math-verify computed directly."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from math_verify import parse, verify
from sklearn.metrics import f1_score

from domdistill.data.example import DomainExample
from domdistill.data.loaders import load_dataset
from domdistill.evaluation.metrics import compute_metrics, score_outputs


def _simulate(examples, labels, seed=0):
    """Outputs that are right more often for big domains (a typical long-tail student)."""
    rng = random.Random(seed)
    counts = {d: sum(e.domain == d for e in examples) for d in labels}
    top = max(counts.values())
    outs = []
    for ex in examples:
        p_right = 0.2 + 0.75 * (counts[ex.domain] / top) ** 0.5
        if rng.random() < p_right:
            outs.append(f"Some reasoning.\nThe answer is: {ex.answer}")
        elif rng.random() < 0.9:
            outs.append(f"The answer is: {rng.choice(labels)}")
        else:
            outs.append("I do not know")  # no parsable answer
    return outs


@pytest.fixture(scope="module")
def r52(shared_data):
    data = load_dataset(shared_data / "reuters-r52" / "r52-test.txt", format="r52")
    labels = sorted({ex.answer for ex in data})
    outputs = _simulate(list(data), labels)
    rows = score_outputs(outputs, list(data), "classification", labels)
    return data, labels, rows


def test_classification_matches_sklearn(r52):
    data, labels, rows = r52
    m = compute_metrics(rows, "classification", bootstrap=0)
    gold = [ex.answer for ex in data]
    pred = [r.pred if r.pred is not None else "<none>" for r in rows]
    gold_labels = sorted(set(gold))
    assert m["n"] == len(data) == sum(v["n"] for v in m["per_domain"].values())
    assert m["macro"]["f1"] == pytest.approx(f1_score(gold, pred, labels=gold_labels, average="macro"))
    assert m["micro"]["f1"] == pytest.approx(f1_score(gold, pred, average="micro"))
    per_class = f1_score(gold, pred, labels=gold_labels, average=None)
    for lbl, f in zip(gold_labels, per_class):
        assert m["per_domain"][lbl]["f1"] == pytest.approx(f)
        acc = np.mean([p == g for p, g in zip(pred, gold) if g == lbl])
        assert m["per_domain"][lbl]["accuracy"] == pytest.approx(acc)
    # macro = mean over domains; micro = over examples
    assert m["macro"]["accuracy"] == pytest.approx(np.mean([v["accuracy"] for v in m["per_domain"].values()]))
    assert m["micro"]["accuracy"] == pytest.approx(np.mean([p == g for p, g in zip(pred, gold)]))
    assert m["micro"]["f1"] == pytest.approx(m["micro"]["accuracy"])


def test_macro_below_micro_on_long_tail(r52):
    data, labels, rows = r52
    m = compute_metrics(rows, "classification", bootstrap=200, seed=1)
    counts = data.counts()
    assert max(counts.values()) / min(counts.values()) > 100  # really long-tailed
    # the student is worse on small domains, which dominate the macro average
    assert m["micro"]["accuracy"] - m["macro"]["accuracy"] > 0.1
    assert m["micro"]["f1"] - m["macro"]["f1"] > 0.1
    assert m["head"]["accuracy"] > m["tail"]["accuracy"]
    head_n = m["head"]["n"]
    assert head_n >= len(data) / 2 and set(m["head"]["domains"]).isdisjoint(m["tail"]["domains"])
    lo, hi = m["macro_ci"]["f1"]
    assert lo <= m["macro"]["f1"] <= hi and hi - lo > 0
    lo, hi = m["macro_ci"]["accuracy"]
    assert lo <= m["macro"]["accuracy"] <= hi
    again = compute_metrics(rows, "classification", bootstrap=200, seed=1)
    assert again["macro_ci"] == m["macro_ci"]  # seeded


def test_domains_that_are_not_labels():
    rows = []
    rng = random.Random(3)
    for i in range(300):
        dom = "big" if i < 240 else "small"
        gold = rng.choice(["a", "b", "c"])
        pred = gold if rng.random() < (0.9 if dom == "big" else 0.4) else rng.choice(["a", "b", "c"])
        rows.append(DomainExample(str(i), dom, "x", gold))
        rows[-1] = (rows[-1], f"The answer is: {pred}")
    examples = [r[0] for r in rows]
    scored = score_outputs([r[1] for r in rows], examples, "classification", ["a", "b", "c"])
    m = compute_metrics(scored, "classification", head=["big"], tail=["small"], bootstrap=50)
    gold = [e.answer for e in examples]
    pred = [s.pred for s in scored]
    assert m["macro"]["f1"] == pytest.approx(f1_score(gold, pred, average="macro"))
    small = [i for i, e in enumerate(examples) if e.domain == "small"]
    assert m["per_domain"]["small"]["f1"] == pytest.approx(
        f1_score([gold[i] for i in small], [pred[i] for i in small], average="macro"))
    assert m["tail"]["accuracy"] == m["per_domain"]["small"]["accuracy"]


def test_math_matches_math_verify(shared_data):
    lines = (shared_data / "math-500" / "test.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    rng = random.Random(0)
    examples, outputs, expected = [], [], []
    variants = {"1/2": "\\frac{1}{2}", "0.5": "\\frac12"}
    for i, r in enumerate(recs):
        ex = DomainExample(r["unique_id"], r["subject"], r["problem"], r["answer"])
        u = rng.random()
        if u < 0.5:
            pred = r["answer"]
        elif u < 0.6:
            pred = variants.get(r["answer"], r["answer"])
        else:
            pred = str(rng.randint(100, 999))
        examples.append(ex)
        outputs.append(f"Work.\n\\boxed{{{pred}}}")
        expected.append(bool(verify(parse(f"${r['answer']}$"), parse(f"${pred}$"))) or pred == r["answer"])
    m = compute_metrics(score_outputs(outputs, examples, "math"), "math", bootstrap=0)
    assert m["micro"]["exact_match"] == pytest.approx(np.mean(expected))
    for dom, block in m["per_domain"].items():
        want = [e for e, ex in zip(expected, examples) if ex.domain == dom]
        assert block["n"] == len(want)
        assert block["exact_match"] == pytest.approx(np.mean(want)) == block["accuracy"]
    assert m["macro"]["exact_match"] == pytest.approx(np.mean([b["exact_match"] for b in m["per_domain"].values()]))
    # equivalent forms count as right
    half = DomainExample("h", "Algebra", "q", "\\frac{1}{2}")
    s = score_outputs(["The answer is: 0.5"], [half], "math")
    assert s[0].correct


def test_token_f1_and_perplexity():
    examples = [DomainExample("1", "d1", "q", "cat sat down"), DomainExample("2", "d1", "q", "red"),
                DomainExample("3", "d2", "q", "blue sky")]
    outs = ["The answer is: the cat sat", "The answer is: red", "The answer is: green"]
    scored = score_outputs(outs, examples, "qa")
    losses = [(2.0, 4), (1.0, 1), (6.0, 3)]
    m = compute_metrics(scored, "qa", head=["d1"], tail=["d2"], token_losses=losses, bootstrap=0)
    assert m["per_domain"]["d1"]["token_f1"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["per_domain"]["d2"]["token_f1"] == 0.0
    assert m["micro"]["token_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["per_domain"]["d1"]["perplexity"] == pytest.approx(math.exp(3 / 5))
    assert m["per_domain"]["d2"]["perplexity"] == pytest.approx(math.exp(2))
    assert m["micro"]["perplexity"] == pytest.approx(math.exp(9 / 8))
    assert m["macro"]["perplexity"] == pytest.approx((math.exp(3 / 5) + math.exp(2)) / 2)
    assert m["head"]["perplexity"] == m["per_domain"]["d1"]["perplexity"]


@pytest.mark.parametrize("output, expected", [
    ("Step 1: the text reports quarterly profit.\nThe answer is: earn", "earn"),
    ("The answer is: Money-FX.", "money-fx"),
    ("The answer is: money-fx or money-supply", "money-supply"),  # longest label named wins
    ('The topic is "acq," since one firm buys another.', "acq"),  # no answer line, one label named
    ("This could be crude or earn.", None),  # no answer line, two labels named: no answer
    ("Topics: money-fx news today", "money-fx"),  # "money" alone is not a label inside "money-fx"
    ("I cannot tell.", None),
    ("The answer is: weather", None),
])
def test_labels_are_read_from_the_answer_line_else_from_a_single_mention(output, expected):
    from domdistill.evaluation.answers import extract_label

    labels = ["earn", "acq", "crude", "money-fx", "money-supply", "money"]
    assert extract_label(output, labels) == expected


def test_intervals_do_not_collapse_when_the_outputs_all_agree():
    from domdistill.evaluation.metrics import Scored, compute_metrics

    # one label for everything: a stratified resample of these examples would be the same set
    rows = [Scored(f"{d}{i}", d, d, "a", d == "a") for d in "abcde" for i in range(10)]
    out = compute_metrics(rows, "classification", bootstrap=300)
    for name in ("accuracy", "f1"):
        lo, hi = out["macro_ci"][name]
        assert lo <= out["macro"][name] <= hi and hi - lo > 0.05, name
    assert out["top_prediction"] == "a" and out["top_prediction_share"] == 1.0
    assert any("collapsed to one answer" in w for w in out["warnings"])
    # every math answer wrong: the interval still reaches above zero
    wrong = [Scored(f"{d}{i}", d, "1", "2", False) for d in "abc" for i in range(10)]
    out = compute_metrics(wrong, "math", bootstrap=300)
    assert out["macro_ci"]["accuracy"][0] == 0.0 and out["macro_ci"]["accuracy"][1] > 0.03


def test_no_answer_share_and_its_warning():
    from domdistill.evaluation.metrics import Scored, compute_metrics

    rows = [Scored(f"{d}{i}", d, d, d if i % 2 else None, bool(i % 2)) for d in "ab" for i in range(10)]
    rows += [Scored(f"c{i}", "c", "c", "c", True) for i in range(10)]
    out = compute_metrics(rows, "classification", bootstrap=0)
    assert out["per_domain"]["a"]["no_answer"] == 0.5 and out["per_domain"]["c"]["no_answer"] == 0
    assert abs(out["no_answer"] - 10 / 30) < 1e-12
    assert len(out["warnings"]) == 1 and "33% of the student's 30 test outputs" in out["warnings"][0]
    # the head and tail blocks average scores only
    assert "no_answer" not in out["head"] and "top_prediction" not in out["tail"]
    # a large domain answered correctly is not a collapse
    big = [Scored(f"x{i}", "x", "x", "x", True) for i in range(40)] + rows[:10]
    assert not any("collapsed" in w for w in compute_metrics(big, "classification", bootstrap=0)["warnings"])
