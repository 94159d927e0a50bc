"""Answer extraction and comparison per task type (labels, multiple-choice letters, math, QA)."""

from __future__ import annotations

import re
import string
from collections import Counter

from domdistill.data.templates import ANSWER_PREFIX

_FINAL = re.compile(re.escape(ANSWER_PREFIX) + r"\s*(.*)", re.IGNORECASE)


def final_answer_text(text: str) -> str | None:
    """The text after the last 'The answer is:' (first line of it), or None."""
    matches = _FINAL.findall(text or "")
    if not matches:
        return None
    ans = matches[-1].strip().split("\n")[0].strip()
    return ans.rstrip(".").strip() or None


def _norm(s: str) -> str:
    return " ".join(s.lower().strip().strip(string.punctuation + " ").split())


def extract_label(text: str, labels: list[str] | None) -> str | None:
    """A label from the final-answer line; with a label set, the first label it names.

    Without an answer line (an untrained pretrained student rarely writes one), an output that
    names exactly one label of the set counts as answering it; naming several is no answer.
    """
    ans = final_answer_text(text)
    if ans is None:
        if not labels:
            return None
        named = _labels_named(_norm(text or ""), {_norm(lbl): lbl for lbl in labels})
        return named[0] if len(named) == 1 else None
    if not labels:
        return _norm(ans)
    norm = _norm(ans)
    by_norm = {_norm(lbl): lbl for lbl in labels}
    if norm in by_norm:
        return by_norm[norm]
    named = _labels_named(norm, by_norm)
    return named[0] if named else None


def _labels_named(text: str, by_norm: dict[str, str]) -> list[str]:
    """Labels mentioned in ``text`` as whole words, longest first ("money" does not match
    inside "money-fx": hyphens count as part of a word)."""
    return [by_norm[key] for key in sorted(by_norm, key=len, reverse=True)
            if re.search(rf"(?<![\w-]){re.escape(key)}(?![\w-])", text)]


def extract_choice(text: str) -> str | None:
    """A multiple-choice letter (A-J) from the final-answer line."""
    ans = final_answer_text(text)
    if ans is None:
        return None
    m = re.search(r"\(?\b([A-J])\b\)?", ans)
    return m.group(1) if m else None


def extract_math(text: str) -> str | None:
    """The final answer of a math solution: the last \\boxed{...}, else the final-answer line."""
    boxed = last_boxed(text or "")
    return boxed if boxed is not None else final_answer_text(text)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j].strip()
    return None


def math_equal(pred: str | None, gold: str) -> bool:
    """Equivalence of math answers through math-verify (falls back to normalised string match)."""
    if pred is None:
        return False
    from math_verify import parse, verify

    try:
        g = parse(f"${gold}$")
        p = parse(f"${pred}$")
        if g and p and verify(g, p):
            return True
    except Exception:  # math-verify raises on unparsable LaTeX; treat as no match
        pass
    return _norm(pred) == _norm(gold)


def token_f1(pred: str | None, gold: str) -> float:
    """SQuAD-style word-level F1 between two answers."""
    p, g = _norm(pred or "").split(), _norm(gold).split()
    common = sum((Counter(p) & Counter(g)).values())
    if not p or not g or common == 0:
        return float(p == g)
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def extract_answer(text: str, task: str, labels: list[str] | None = None) -> str | None:
    """Dispatch on task type."""
    if task == "classification":
        return extract_label(text, labels)
    if task == "multiple_choice":
        return extract_choice(text)
    if task == "math":
        return extract_math(text)
    return final_answer_text(text)


def is_correct(pred: str | None, gold: str, task: str) -> bool:
    """Whether a parsed prediction matches the gold answer for this task type."""
    if pred is None:
        return False
    if task == "math":
        return math_equal(pred, gold)
    if task == "multiple_choice":
        return pred.strip().upper() == gold.strip().upper()
    return _norm(pred) == _norm(gold)
