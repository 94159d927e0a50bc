"""Can this teacher distil into this student with logit KD? Checked before any compute.

Logit KD compares the two next-token distributions id by id, so both models must use the same
tokenizer. Their lm_heads may still differ in size by padded rows that no token uses (Qwen2.5:
151936 vs 152064); the loss then runs over the shared ``min`` of the two sizes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from domdistill.errors import ConfigError

# Parts of a fast tokenizer's definition that change how text is split into ids.
_PIPELINE_PARTS = ("normalizer", "pre_tokenizer", "model")


def _vocab_size(config: Any, who: str) -> int:
    size = config.get("vocab_size") if isinstance(config, Mapping) else getattr(
        config, "vocab_size", None)
    if not isinstance(size, int) or size <= 0:
        raise ConfigError(f"{who} config has no positive integer vocab_size (got {size!r})",
                          field=f"{who}.vocab_size")
    return size


def _id_to_token(tokenizer: Any) -> dict[int, str]:
    return {i: t for t, i in tokenizer.get_vocab().items()}


def _pipeline(tokenizer: Any) -> dict[str, Any] | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    return {k: spec.get(k) for k in _PIPELINE_PARTS}


def check_kd_compatible(teacher_tokenizer: Any, student_tokenizer: Any, teacher_config: Any,
                        student_config: Any) -> int:
    """Return the shared vocabulary size, or raise :class:`ConfigError` saying what differs.

    Requirements: the two tokenizers map exactly the same tokens to the same ids (first
    differing id reported) and, for fast tokenizers, split text the same way (normalizer,
    pre-tokenizer and model/merges); every token id fits both models' lm_heads. The configs'
    ``vocab_size`` values may differ by padded rows: the smaller one is returned.
    """
    v_t = _vocab_size(teacher_config, "teacher")
    v_s = _vocab_size(student_config, "student")
    shared = min(v_t, v_s)
    t_ids, s_ids = _id_to_token(teacher_tokenizer), _id_to_token(student_tokenizer)
    for who, ids, own in (("teacher", t_ids, v_t), ("student", s_ids, v_s)):
        top = max(ids, default=-1)
        if top >= own:
            raise ConfigError(f"the {who} tokenizer has token id {top} ({ids[top]!r}) but the "
                              f"{who} model has only {own} output rows",
                              field=f"{who}.vocab_size")
        if top >= shared:
            other = "student" if who == "teacher" else "teacher"
            raise ConfigError(f"the {who} tokenizer has token id {top} ({ids[top]!r}) but the "
                              f"{other} model has only {shared} output rows; vocabularies may "
                              f"differ only by padded rows", field=f"{other}.vocab_size")
    for i in range(max(max(t_ids, default=-1), max(s_ids, default=-1)) + 1):
        a, b = t_ids.get(i), s_ids.get(i)
        if a != b:
            raise ConfigError(f"teacher and student tokenizers differ: first differing token id "
                              f"{i} is {a!r} in the teacher and {b!r} in the student; logit KD "
                              f"needs the same tokenizer", field="tokenizer")
    t_pipe, s_pipe = _pipeline(teacher_tokenizer), _pipeline(student_tokenizer)
    if t_pipe is not None and s_pipe is not None:
        for part in _PIPELINE_PARTS:
            if t_pipe[part] != s_pipe[part]:
                raise ConfigError(f"teacher and student tokenizers have the same vocabulary but "
                                  f"a different {part}, so the same text gets different ids",
                                  field=f"tokenizer.{part}")
    return shared
