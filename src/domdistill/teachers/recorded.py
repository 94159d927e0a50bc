"""Replay teachers: recorded outputs (the BalDistill authors' files) and the built-in program.

Neither invents an answer: a request with no record (or an input the program cannot solve)
is a :class:`TeacherError` naming the input.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from domdistill.data.example import DomainExample
from domdistill.data.recorded import load_recorded, r52_match_key
from domdistill.errors import InputError, TeacherError
from domdistill.teachers.base import TeacherRequest, TeacherResponse
from domdistill.teachers.prompts import with_final_answer


def exact_key(text: str) -> str:
    """Whitespace-normalised text: the lookup key for MATH / MCQA records."""
    return " ".join(text.split())


MATCHERS: dict[str, Callable[[str], str]] = {"exact": exact_key, "r52": r52_match_key}


class RecordedTeacher:
    """Answers from recorded teacher output.

    Rationale requests are looked up by input (``match_key`` of the text). Synthesis requests
    for a domain are served from that domain's recorded synthetic examples in order
    (request ``index`` i gets the i-th). Records in the rationale shape whose input is not one
    of ``real_inputs`` (when given) are synthetic examples for their label's domain: that is how
    the R52 files mix teacher-written tail documents with real ones.
    """

    max_batch = 1

    def __init__(self, records: Iterable[DomainExample], match: str = "exact",
                 real_inputs: Iterable[str] | None = None, name: str = "recorded"):
        if match not in MATCHERS:
            raise InputError(f"unknown match {match!r} (expected one of {', '.join(MATCHERS)})",
                             field="match")
        self.match_key = MATCHERS[match]
        self.model = name
        self.teacher_id = f"recorded:{name}"
        real = {self.match_key(t) for t in real_inputs} if real_inputs is not None else None
        self.rationale_by_key: dict[str, tuple[str, str | None]] = {}
        self.synthetic: dict[str, list[DomainExample]] = {}
        seen_synthetic: set[str] = set()
        for ex in records:
            if ex.rationale is None or ex.metadata.get("shape") not in ("rationale", "synthetic"):
                continue
            key = self.match_key(ex.input)
            pred = ex.metadata.get("prediction")
            self.rationale_by_key.setdefault(key, (ex.rationale, pred))
            synthetic = ex.metadata.get("synthetic") or (real is not None and key not in real)
            if synthetic and key not in seen_synthetic:
                seen_synthetic.add(key)
                self.synthetic.setdefault(ex.domain, []).append(ex)

    @classmethod
    def from_paths(cls, paths: Iterable[str | Path], match: str = "exact",
                   real_inputs: Iterable[str] | None = None, name: str = "recorded") -> "RecordedTeacher":
        """Load recorded JSONL(.gz) files (first record of an input wins, in path order)."""
        records: list[DomainExample] = []
        for p in paths:
            records.extend(load_recorded(p))
        return cls(records, match=match, real_inputs=real_inputs, name=name)

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
