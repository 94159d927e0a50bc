"""A local Hugging Face causal LM as teacher: batched generation (left padding) and logits."""

from __future__ import annotations

import asyncio
from typing import Any

import torch

from domdistill.teachers.base import TeacherRequest, TeacherResponse


class HFTeacher:
    """Greedy (``temperature == 0``) or sampled generation with ``model``/``tokenizer``, up to
    ``batch_size`` prompts per forward pass; :meth:`logits` gives full logits for white-box KD."""

    def __init__(self, model: Any, tokenizer: Any, name: str | None = None, batch_size: int = 8,
                 seed: int = 0):
        self.model = name or getattr(model, "name_or_path", None) or "local"
        self.teacher_id = f"hf:{self.model}"
        self.max_batch = batch_size
        self.seed = seed
        self._model = model.eval()
        self._tok = tokenizer
        if self._tok.pad_token is None:
            self._tok.pad_token = self._tok.eos_token
        self._lock = asyncio.Lock()

    @classmethod
    def from_pretrained(cls, path: str, batch_size: int = 8, dtype: str = "auto") -> "HFTeacher":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        return cls(model, tok, name=path, batch_size=batch_size)

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        """The chat rendered with the tokenizer's chat template, or plain text without one."""
        if getattr(self._tok, "chat_template", None):
            return self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n"

    async def complete(self, requests: list[TeacherRequest]) -> list[TeacherResponse]:
        async with self._lock:  # one forward pass at a time; the model is not re-entrant
            return await asyncio.to_thread(self.generate, requests)

    @torch.no_grad()
    def generate(self, requests: list[TeacherRequest]) -> list[TeacherResponse]:
        """One left-padded batch through ``model.generate``; same sampling params for the batch."""
        params = requests[0].sampling
        texts = [self.prompt_text(r.chat) for r in requests]
        self._tok.padding_side = "left"
        enc = self._tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(self._model.device)
        temperature = float(params.get("temperature", 0.0))
        gen: dict[str, Any] = {"max_new_tokens": int(params.get("max_tokens", 128)),
                               "pad_token_id": self._tok.pad_token_id}
        if temperature > 0:
            torch.manual_seed(self.seed)
            gen.update(do_sample=True, temperature=temperature)
        else:
            gen.update(do_sample=False)
        out = self._model.generate(**enc, **gen)
        new = out[:, enc["input_ids"].shape[1]:]
        responses = []
        for row, mask in zip(new, enc["attention_mask"]):
            ids = row[row != self._tok.pad_token_id] if self._tok.pad_token_id is not None else row
            responses.append(TeacherResponse(self._tok.decode(ids, skip_special_tokens=True),
                                             prompt_tokens=int(mask.sum()), completion_tokens=len(ids)))
        return responses

    @torch.no_grad()
    def logits(self, texts: list[str]) -> list[torch.Tensor]:
        """Full next-token logits ``[len, vocab]`` for each text (no padding rows returned)."""
        self._tok.padding_side = "left"
        enc = self._tok(texts, return_tensors="pt", padding=True).to(self._model.device)
        logits = self._model(**enc).logits
        return [lg[m.bool()].float().cpu() for lg, m in zip(logits, enc["attention_mask"])]

    async def aclose(self) -> None:
        return None
