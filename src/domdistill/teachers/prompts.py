"""Teacher prompts (zero-shot CoT rationales, tail synthesis from k exemplars) and their parsing.

Templates are plain ``str.format`` strings, configurable through ``TeacherConfig``; fields:
``{instruction}`` (the task instruction of the student template), ``{input}``, ``{answer}``,
``{domain}``, ``{k}``, ``{exemplars}``, ``{number}``. Every rationale ends with
``The answer is: X`` so answers parse the same way for teacher and student.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from domdistill.data.templates import ANSWER_PREFIX, StudentTemplate
from domdistill.evaluation.answers import extract_answer, final_answer_text

SYSTEM = "You are an expert annotator. Follow the requested output format exactly."

RATIONALE = ("{instruction}\n\n{input}\n\nLet's think step by step. Explain your reasoning, then "
             f"end with a final line of the form \"{ANSWER_PREFIX} X\".")

RATIONALE_WITH_ANSWER = ("{instruction}\n\n{input}\n\nThe correct answer is: {answer}\n"
                         "Let's think step by step. Explain the reasoning that leads to this answer, "
                         f"then end with the final line \"{ANSWER_PREFIX} {{answer}}\".")

SYNTHESIS = ("Task: {instruction}\n\nHere are {k} real examples from the domain \"{domain}\":\n\n"
             "{exemplars}\n\nWrite ONE new example for the domain \"{domain}\" (new example number "
             "{number}). It must be different from every example above but of the same kind and "
             "difficulty. Reply in exactly this format:\nInput: <the new input>\n"
             f"{ANSWER_PREFIX} <its correct answer>")

SYNTHESIS_WITH_RATIONALE = ("Task: {instruction}\n\nHere are {k} real examples from the domain "
                            "\"{domain}\":\n\n{exemplars}\n\nWrite ONE new example for the domain "
                            "\"{domain}\" (new example number {number}). It must be different from "
                            "every example above but of the same kind and difficulty. Reply in "
                            "exactly this format:\nInput: <the new input>\nReasoning: <step-by-step "
                            f"reasoning that solves it>\n{ANSWER_PREFIX} <its correct answer>")

EXEMPLAR = "Example {n}:\nInput: {input}\n" + ANSWER_PREFIX + " {answer}"


@dataclass(frozen=True)
class PromptSet:
    """The teacher's templates for one task type."""

    task: str = "builtin"
    labels: tuple[str, ...] | None = None
    system: str = SYSTEM
    rationale: str = RATIONALE
    rationale_with_answer: str = RATIONALE_WITH_ANSWER
    synthesis: str = SYNTHESIS
    synthesis_with_rationale: str = SYNTHESIS_WITH_RATIONALE

    @property
    def instruction(self) -> str:
        return StudentTemplate.for_task(self.task, list(self.labels or [])).instruction

    def _messages(self, user: str) -> tuple[tuple[str, str], ...]:
        return (("system", self.system), ("user", user)) if self.system else (("user", user),)

    def rationale_messages(self, text: str, answer: str | None) -> tuple[tuple[str, str], ...]:
        """Zero-shot CoT prompt for ``text``; with ``answer`` the gold answer is shown."""
        tpl = self.rationale if answer is None else self.rationale_with_answer
        return self._messages(tpl.format(instruction=self.instruction, input=text, answer=answer))

    def synthesis_messages(self, domain: str, exemplars: list[tuple[str, str]], number: int,
                           with_rationale: bool) -> tuple[tuple[str, str], ...]:
        """Prompt asking for one new example of ``domain`` from ``(input, answer)`` exemplars."""
        shown = "\n\n".join(EXEMPLAR.format(n=i + 1, input=x, answer=a)
                            for i, (x, a) in enumerate(exemplars))
        tpl = self.synthesis_with_rationale if with_rationale else self.synthesis
        return self._messages(tpl.format(instruction=self.instruction, k=len(exemplars),
                                         domain=domain, exemplars=shown, number=number + 1))

    def parse_answer(self, text: str) -> str | None:
        """The final answer of a rationale: a label of the set, an MC letter, or a math answer."""
        return extract_answer(text, self.task, list(self.labels) if self.labels else None)


_INPUT = re.compile(r"(?:^|\n)\s*\**Input\**:\s*(.*?)(?=\n\s*\**(?:Reasoning|"
                    + re.escape(ANSWER_PREFIX) + r")|\Z)", re.DOTALL | re.IGNORECASE)
_REASONING = re.compile(r"\n\s*\**Reasoning\**:\s*(.*?)(?=\n\s*" + re.escape(ANSWER_PREFIX) + r"|\Z)",
                        re.DOTALL | re.IGNORECASE)


def parse_synthesis(text: str) -> tuple[str | None, str | None, str | None]:
    """``(input, rationale, answer_text)`` from a synthesis reply; parts that are missing are None.
    The last ``Input:`` block wins (a reply may restate the exemplars first)."""
    inputs = _INPUT.findall(text or "")
    new_input = inputs[-1].strip() if inputs else None
    tail = text[text.rfind("Input:"):] if "Input:" in (text or "") else (text or "")
    m = _REASONING.search(tail)
    rationale = m.group(1).strip() if m else None
    return new_input or None, rationale or None, final_answer_text(tail)


def with_final_answer(rationale: str, answer: str | None) -> str:
    """The rationale ending in ``The answer is: X`` (added when missing, as the student expects)."""
    rationale = (rationale or "").strip()
    if answer is None or final_answer_text(rationale) is not None:
        return rationale
    return f"{rationale}\n{ANSWER_PREFIX} {answer}".strip()
