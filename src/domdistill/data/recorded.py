"""Recorded teacher output of the BalDistill authors (JSON Lines, optionally ``.gz``), and the
R52 text normalisation that pairs recorded texts with the preprocessed R52 documents.

Record shapes (each line is one of them):

=======================================================  =====================================
keys                                                     mapped to
=======================================================  =====================================
``label, text``                                          R52 pool draw: domain = answer = label
``domain, label, text``                                  pool draw: domain, answer = label
``label, text, rationale, prediction``                   teacher rationale for a real input
``gt_choice, text, rationale, prediction, source``       synthetic example for domain ``source``
``label, org, text, source, split``                      MATH pool: rationale = org
=======================================================  =====================================

Records without a domain (the rationale shape) take it from ``domain_of[text]`` when given,
else from the label (right for R52, where the label is the topic). MATH subject display names
(``"Number Theory"``) become subject folder names (``number_theory``) so that they match
:func:`~domdistill.data.math.load_math`. ``metadata`` keeps ``prediction``, ``synthetic``,
``shape`` and ``split``; ``id`` is ``f"{file stem}-{line}"``. An empty label is an error,
except for synthetic records, where an empty ``gt_choice`` (the teacher stated no answer)
loads as an empty answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from domdistill.data.example import DomainDataset, DomainExample
from domdistill.data.math import math_subject_key
from domdistill.data.reading import Collector, get_text, iter_json_lines, source_stem
from domdistill.errors import InputError

RECORD_SHAPES: dict[frozenset[str], str] = {
    frozenset({"label", "text"}): "pool",
    frozenset({"domain", "label", "text"}): "pool_domain",
    frozenset({"label", "text", "rationale", "prediction"}): "rationale",
    frozenset({"gt_choice", "text", "rationale", "prediction", "source"}): "synthetic",
    frozenset({"label", "org", "text", "source", "split"}): "corpus",
}


def is_recorded_record(record: Mapping[str, Any]) -> bool:
    """Whether a JSON object has exactly one of the recorded-teacher key sets."""
    return frozenset(record) in RECORD_SHAPES


def recorded_example(record: dict[str, Any], *, path: Path | str, line: int, stem: str,
                     domain_of: Mapping[str, str] | None = None) -> DomainExample:
    """Map one recorded-teacher record to an example (see the module docstring)."""
    shape = RECORD_SHAPES.get(frozenset(record))
    if shape is None:
        known = "; ".join("{" + ", ".join(sorted(k)) + "}" for k in RECORD_SHAPES)
        raise InputError(f"unknown record shape {{{', '.join(sorted(record))}}} "
                         f"(expected one of: {known})", path=path, line=line)
    kw = dict(path=path, line=line)
    text = get_text(record, "text", **kw)
    answer_key = "gt_choice" if shape == "synthetic" else "label"
    # a synthetic record is teacher output: an empty intended answer is kept (answer "")
    # for the answer filter to reject, as the MCQA file has 6 such records
    answer = get_text(record, answer_key, allow_number=True, allow_empty=shape == "synthetic",
                      **kw).strip()
    if shape in ("synthetic", "corpus"):
        domain = get_text(record, "source", **kw)
    elif shape == "pool_domain":
        domain = get_text(record, "domain", **kw)
    elif domain_of is not None and text in domain_of:
        domain = domain_of[text]
    else:
        domain = answer
    rationale = None
    if shape in ("rationale", "synthetic"):
        rationale = get_text(record, "rationale", allow_empty=True, **kw)
    elif shape == "corpus":
        rationale = get_text(record, "org", **kw)
    meta: dict[str, Any] = {"shape": shape, "synthetic": shape == "synthetic"}
    if "prediction" in record:
        meta["prediction"] = get_text(record, "prediction", required=False, allow_number=True,
                                      allow_empty=True, **kw)
    if "split" in record:
        meta["split"] = get_text(record, "split", **kw)
    return DomainExample(id=f"{stem}-{line}", domain=math_subject_key(domain), input=text,
                         answer=answer, rationale=rationale, metadata=meta)


def load_recorded(path: str | Path, label_set: Iterable[str] | None = None,
                  domain_of: Mapping[str, str] | None = None) -> DomainDataset:
    """A recorded-teacher file, one example per record, in file order.

    ``domain_of`` maps input text to domain for records that carry none (e.g. the MATH
    rationale files: build it from ``corpus.jsonl.gz`` with :func:`domains_by_text`).
    """
    path = Path(path)
    stem, out = source_stem(path), Collector(path, label_set)
    for line, record in iter_json_lines(path):
        ex = recorded_example(record, path=path, line=line, stem=stem, domain_of=domain_of)
        out.add(ex, line, "gt_choice" if ex.metadata["synthetic"] else "label")
    return out.dataset(stem, what="records")


def domains_by_text(dataset: Iterable[DomainExample]) -> dict[str, str]:
    """``input text -> domain`` for looking up the domain of domain-less records."""
    return {ex.input: ex.domain for ex in dataset}


# ---- R52 text normalisation ----------------------------------------------------------------

_NON_LETTERS = re.compile(r"[^a-z]+")


def normalize_r52_text(text: str) -> str:
    """Bring an original Reuters text to the R52 "no-short" preprocessing.

    Lower-case, every non-letter becomes a space, words under 3 letters are dropped, and a
    trailing ``reuter`` (the wire sign-off that the R52 documents end with) is removed, so
    texts with and without it normalise alike. Words are joined by single spaces.
    """
    words = [w for w in _NON_LETTERS.split(text.lower()) if len(w) >= 3]
    while words and words[-1] == "reuter":
        words.pop()
    return " ".join(words)


def r52_match_key(text: str, words: int = 30) -> str:
    """The first ``words`` words of the normalised text: a key that pairs a recorded
    (original-wording) text with its preprocessed R52 document."""
    return " ".join(normalize_r52_text(text).split(" ")[:words])
