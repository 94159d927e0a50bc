"""Replay teachers: recorded outputs (the BalDistill authors' files) and the built-in program.

Neither invents an answer: a request with no record (or an input the program cannot solve)
is a :class:`TeacherError` naming the input.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from domdistill.data.example import DomainExample
from domdistill.data.recorded import load_recorded, r52_match_key
from domdistill.errors import InputError, TeacherError
from domdistill.teachers.base import TeacherRequest, TeacherResponse
from domdistill.teachers.prompts import with_final_answer


_COMPOSED = re.compile(r"composed.*count_(\d+)")


def exact_key(text: str) -> str:
    """Whitespace-normalised text: the lookup key for MATH / MCQA records."""
    return " ".join(text.split())


MATCHERS: dict[str, Callable[[str], str]] = {"exact": exact_key, "r52": r52_match_key}


class RecordedTeacher:
    """Answers from recorded teacher output.

    Rationale requests are looked up by input (``match_key`` of the text). Synthesis requests
    for a domain are served from that domain's recorded synthetic examples in order
    (request ``index`` i gets the i-th). The R52 "composed" files mix teacher-written tail
    documents into the rationale shape: given the ``real`` training pool, a record there counts
    as synthetic when its input is no real document and its domain has fewer real documents than
    the file's per-class count (``..._count_50``), i.e. the domain was a tail the file filled.
    """

    max_batch = 1

    def __init__(self, records: Iterable[DomainExample], match: str = "exact",
                 real: Iterable[DomainExample] | None = None, name: str = "recorded"):
        if match not in MATCHERS:
            raise InputError(f"unknown match {match!r} (expected one of {', '.join(MATCHERS)})",
                             field="match")
        self.match_key = MATCHERS[match]
        self.model = name
        self.teacher_id = f"recorded:{name}"
        real_list = list(real) if real is not None else None
        real_keys = {self.match_key(ex.input) for ex in real_list} if real_list is not None else None
        real_counts = Counter(ex.domain for ex in real_list or [])
        self.rationale_by_key: dict[str, tuple[str, str | None]] = {}
        self.synthetic: dict[str, list[DomainExample]] = {}
        seen_synthetic: set[str] = set()
        for ex in records:
            if ex.rationale is None or ex.metadata.get("shape") not in ("rationale", "synthetic"):
                continue
            key = self.match_key(ex.input)
            pred = ex.metadata.get("prediction")
            self.rationale_by_key.setdefault(key, (ex.rationale, pred))
            synthetic = bool(ex.metadata.get("synthetic"))
            if not synthetic and real_keys is not None and key not in real_keys:
                m = _COMPOSED.search(ex.id)
                synthetic = m is not None and real_counts[ex.domain] < int(m.group(1))
            if synthetic and key not in seen_synthetic:
                seen_synthetic.add(key)
                self.synthetic.setdefault(ex.domain, []).append(ex)

    @classmethod
    def from_paths(cls, paths: Iterable[str | Path], match: str = "exact",
                   real: Iterable[DomainExample] | None = None, name: str = "recorded") -> "RecordedTeacher":
        """Load recorded JSONL(.gz) files (first record of an input wins, in path order)."""
        records: list[DomainExample] = []
        for p in paths:
            records.extend(load_recorded(p))
        return cls(records, match=match, real=real, name=name)

    def has_rationale(self, text: str) -> bool:
        return self.match_key(text) in self.rationale_by_key

    async def complete(self, requests: list[TeacherRequest]) -> list[TeacherResponse]:
        return [self._one(r) for r in requests]

    def _one(self, req: TeacherRequest) -> TeacherResponse:
        if req.task == "rationale":
            found = self.rationale_by_key.get(self.match_key(req.input or ""))
            if found is None:
                raise TeacherError(f"recorded teacher '{self.model}' has no record of the "
                                   f"{req.describe()} (domain '{req.domain}')")
            rationale, pred = found
            return TeacherResponse(with_final_answer(rationale, pred),
                                   data={"rationale": rationale, "answer": pred})
        pool = self.synthetic.get(req.domain, [])
        if req.index >= len(pool):
            raise TeacherError(f"recorded teacher '{self.model}' has {len(pool)} synthetic "
                               f"examples for domain '{req.domain}'; {req.describe()} has no record")
        ex = pool[req.index]
        pred = ex.metadata.get("prediction")
        data: dict[str, Any] = {"input": ex.input, "answer": ex.answer, "prediction": pred}
        if req.with_rationale:
            data["rationale"] = ex.rationale
        text = f"Input: {ex.input}\n" + with_final_answer(ex.rationale or "", ex.answer) \
            if req.with_rationale else f"Input: {ex.input}\nThe answer is: {ex.answer}"
        return TeacherResponse(text, data=data)

    async def aclose(self) -> None:
        return None


class ProgramTeacher:
    """The built-in task's exact solver as a teacher (offline demo, tests): rationales from
    ``builtin.solve``, synthetic examples from ``builtin.make_example`` seeded by (seed, domain, index)."""

    max_batch = 1

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.model = "builtin"
        self.teacher_id = "program:builtin"

    async def complete(self, requests: list[TeacherRequest]) -> list[TeacherResponse]:
        return [self._one(r) for r in requests]

    def _one(self, req: TeacherRequest) -> TeacherResponse:
        from domdistill.data import builtin

        try:
            if req.task == "rationale":
                rationale, answer = builtin.solve(req.domain, req.input or "")
                return TeacherResponse(with_final_answer(rationale, answer),
                                       data={"rationale": rationale, "answer": answer})
            rng = random.Random(f"{self.seed}:{req.domain}:{req.index}")
            ex = builtin.make_example(req.domain, rng, f"{req.domain}/synthetic-{req.index}")
        except InputError as e:
            raise TeacherError(f"program teacher cannot answer the {req.describe()}: {e}") from None
        data: dict[str, Any] = {"input": ex.input, "answer": ex.answer, "prediction": ex.answer}
        if req.with_rationale:
            data["rationale"] = ex.rationale
        return TeacherResponse(f"Input: {ex.input}\n" + with_final_answer(ex.rationale or "", ex.answer),
                               data=data)

    async def aclose(self) -> None:
        return None
