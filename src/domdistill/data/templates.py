"""The student's text format: one template for training, IFD scoring and evaluation.

A training sequence is ``prompt + completion``; the loss is on the completion only. The
completion is the rationale followed by ``The answer is: X``.
"""

from __future__ import annotations

from dataclasses import dataclass

from domdistill.data.example import DomainExample

ANSWER_PREFIX = "The answer is:"

INSTRUCTIONS = {
    "builtin": "Solve the task step by step.",
    "classification": "Assign a topic to the text. You must select the topic from this set: {labels}.",
    "multiple_choice": "Please answer this multiple-choice question. If you are given a passage, "
                       "answer according to the passage.",
    "math": "Please answer this math question by giving the detailed reasoning steps.",
    "qa": "Please answer this question. If you are given a passage, answer according to the passage.",
}


@dataclass(frozen=True)
class StudentTemplate:
    """Formats examples for the student. ``instruction`` may use ``{labels}``."""

    instruction: str = INSTRUCTIONS["builtin"]
    cot_trigger: str = "Let's think step by step."

    @classmethod
    def for_task(cls, task: str, labels: list[str] | None = None) -> "StudentTemplate":
        text = INSTRUCTIONS[task]
        if "{labels}" in text:
            text = text.format(labels=", ".join(labels or []))
        return cls(instruction=text)

    def prompt(self, text: str) -> str:
        return f"{self.instruction}\n{text}\n{self.cot_trigger}\n"

    @staticmethod
    def completion(rationale: str | None, answer: str) -> str:
        """The target: the rationale (if any) then the final-answer line."""
        rationale = (rationale or "").strip()
        if rationale.endswith(f"{ANSWER_PREFIX} {answer}"):
            return rationale
        return f"{rationale}\n{ANSWER_PREFIX} {answer}" if rationale else f"{ANSWER_PREFIX} {answer}"

    def pair(self, ex: DomainExample, with_rationale: bool = True) -> tuple[str, str]:
        """(prompt, completion) for an example; ``with_rationale=False`` trains on the label only."""
        return self.prompt(ex.input), self.completion(ex.rationale if with_rationale else None, ex.answer)
