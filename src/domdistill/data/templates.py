"""The student's text format: one template for training, IFD scoring and evaluation.

A training sequence is ``prompt + completion``; the loss is on the completion only. The
completion is the rationale followed by ``The answer is: X``. When the student's tokenizer has a
chat template, the prompt is sent through it as one user turn followed by the assistant's
generation prompt, and the completion is the assistant's reply (ended by eos, e.g.
``<|im_end|>``); otherwise the prompt is the plain text after BOS.

Inputs that are too long are cut here, the same way everywhere: the input text loses its end
so the instruction, the label set and the answer format always survive, and the rendered prompt
fits ``max_prompt_tokens`` (``training.max_seq_len - evaluation.max_new_tokens`` in a run).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from domdistill.data.example import DomainExample
from domdistill.errors import ConfigError

ANSWER_PREFIX = "The answer is:"
CUT_MARK = " ..."
MIN_INPUT_TOKENS = 8  # a prompt with room for fewer input tokens than this is refused

INSTRUCTIONS = {
    "builtin": "Solve the task step by step.",
    "classification": "Assign a topic to the text. You must select the topic from this set: {labels}.",
    "multiple_choice": "Please answer this multiple-choice question. If you are given a passage, "
                       "answer according to the passage.",
    "math": "Please answer this math question by giving the detailed reasoning steps.",
    "qa": "Please answer this question. If you are given a passage, answer according to the passage.",
}


def join_labels(labels: Sequence[str]) -> str:
    """The label set as the instruction lists it: ", " between labels, or "; " when a label has
    a comma of its own ("signs, symptoms"), so the list stays unambiguous."""
    return ("; " if any("," in label for label in labels) else ", ").join(labels)


def uses_chat(tokenizer: Any) -> bool:
    """Whether prompts go through the tokenizer's chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: Any, prompt: str) -> str:
    """The text the student reads for ``prompt``: a chat user turn plus the generation prompt when
    the tokenizer has a chat template, else ``prompt`` itself."""
    if not prompt or not uses_chat(tokenizer):
        return prompt
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt.rstrip("\n")}],
                                         tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The prompt's token ids as the student sees them at training and generation time.

    Chat template: the rendered conversation (its special tokens included, nothing added).
    Otherwise: BOS (when the tokenizer has one) then the text. An empty prompt is BOS alone (how
    IFD scores a reply without its instruction).
    """
    if prompt and uses_chat(tokenizer):
        return tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]


@dataclass(frozen=True)
class StudentTemplate:
    """Formats examples for the student. ``instruction`` may use ``{labels}``;
    ``max_prompt_tokens`` (None: no limit) bounds the rendered prompt by cutting the input."""

    instruction: str = INSTRUCTIONS["builtin"]
    cot_trigger: str = "Let's think step by step."
    max_prompt_tokens: int | None = None

    @classmethod
    def for_task(cls, task: str, labels: list[str] | None = None,
                 max_prompt_tokens: int | None = None) -> "StudentTemplate":
        text = INSTRUCTIONS[task]
        if "{labels}" in text:
            text = text.format(labels=join_labels(labels or []))
        return cls(instruction=text, max_prompt_tokens=max_prompt_tokens)

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
        """(prompt, completion) for an example; ``with_rationale=False`` trains on the label only.
        The input is not cut: use :meth:`pairs` with the student's tokenizer for that."""
        return self.prompt(ex.input), self.completion(ex.rationale if with_rationale else None, ex.answer)

    # -- fitted to a tokenizer -----------------------------------------------------------------
    def room_for_input(self, tokenizer: Any) -> int | None:
        """Input tokens a prompt may hold under ``max_prompt_tokens`` (None: no limit); a limit
        that leaves fewer than ``MIN_INPUT_TOKENS`` is refused."""
        limit = self.max_prompt_tokens
        if limit is None:
            return None
        room = limit - len(prompt_ids(tokenizer, self.prompt("")))
        if room < MIN_INPUT_TOKENS:
            raise ConfigError(
                f"a prompt may hold {limit} tokens (training.max_seq_len - evaluation."
                f"max_new_tokens), but the instruction, label set and answer format take "
                f"{limit - room} of them with this student's tokenizer; raise "
                "training.max_seq_len or lower evaluation.max_new_tokens",
                field="training.max_seq_len")
        return room

    def fit(self, tokenizer: Any, text: str) -> tuple[str, bool]:
        """The prompt for input ``text`` within ``max_prompt_tokens``, and whether it was cut."""
        prompt = self.prompt(text)
        limit = self.max_prompt_tokens
        if limit is None or len(prompt_ids(tokenizer, prompt)) <= limit:
            return prompt, False
        room = self.room_for_input(tokenizer) or 0
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        keep = room - len(tokenizer(CUT_MARK, add_special_tokens=False)["input_ids"]) - 1
        while keep > 0:  # re-tokenizing at the cut can merge tokens: shrink until it fits
            prompt = self.prompt(text[:offsets[keep - 1][1]].rstrip() + CUT_MARK)
            over = len(prompt_ids(tokenizer, prompt)) - limit
            if over <= 0:
                return prompt, True
            keep -= max(over, 1)
        return self.prompt(CUT_MARK.strip()), True

    def prompts(self, tokenizer: Any, inputs: Sequence[str]) -> tuple[list[str], int]:
        """Fitted prompts for ``inputs`` and how many of them had to be cut."""
        fitted = [self.fit(tokenizer, text) for text in inputs]
        return [p for p, _ in fitted], sum(cut for _, cut in fitted)

    def pairs(self, tokenizer: Any, examples: Sequence[DomainExample],
              with_rationale: bool = True) -> tuple[list[tuple[str, str]], int]:
        """(fitted prompt, completion) for each example and how many inputs were cut."""
        prompts, cut = self.prompts(tokenizer, [ex.input for ex in examples])
        return [(p, self.completion(ex.rationale if with_rationale else None, ex.answer))
                for p, ex in zip(prompts, examples)], cut
