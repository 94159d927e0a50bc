"""Secrets stay out of files and messages.

A config names secrets by reference (``${VAR}``, ``teacher.api_key_env``). The API key, and
the values of references whose name or shape says secret, are remembered here; :func:`redact` puts the
reference back wherever such a value, or anything shaped like a provider key, would reach a
message, a warning or the ledger's error column.
"""

from __future__ import annotations

import re

# Shapes of provider keys and tokens (OpenAI, Anthropic, Hugging Face, Groq, xAI, Google, GitHub)
KEY_LIKE = re.compile(r"(?<![A-Za-z0-9_\-/.\\])(?:sk-|sk_|hf_|gsk_|xai-|AIza|ghp_|github_pat_)"
                      r"[A-Za-z0-9_\-]{20,}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MIN_SECRET_CHARS = 6  # shorter values are not hidden in messages
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASS|AUTH|CREDENTIAL|PRIVATE", re.IGNORECASE)

_known: dict[str, str] = {}  # secret value -> the reference shown instead


def remember(value: str | None, reference: str) -> None:
    """Hide ``value`` behind ``reference`` (e.g. ``${OPENAI_API_KEY}``) in every redacted text;
    of a long value also its first 12 and last 8 characters (servers echo pieces of a bad key)."""
    if value and len(value) >= MIN_SECRET_CHARS:
        _known[value] = reference
        if len(value) >= 16:
            _known.setdefault(value[:12], reference)
            _known.setdefault(value[-8:], reference)


def remember_expansion(name: str, value: str) -> None:
    """A ``${NAME}`` expansion: hidden in messages when the name or the value says secret
    (``*_KEY``, ``*TOKEN*``, ``sk-...``); paths and hosts stay readable."""
    if SECRET_NAME.search(name) or looks_like_key(value):
        remember(value, f"${{{name}}}")


def _is_key(word: str) -> bool:
    """A key-shaped word looks random: letters and at least four digits (a file or folder
    name such as ``sk-learn-experiments`` is not taken for a key; inside a path it is not
    matched at all)."""
    return any(c.isalpha() for c in word) and sum(c.isdigit() for c in word) >= 4


def looks_like_key(text: str) -> bool:
    return any(_is_key(m.group(0)) for m in KEY_LIKE.finditer(text))


def redact(text: str) -> str:
    """``text`` with every remembered secret replaced by its reference and key-shaped words by
    ``[redacted key]``."""
    for value in sorted(_known, key=len, reverse=True):
        if value in text:
            text = text.replace(value, _known[value])
    return KEY_LIKE.sub(lambda m: "[redacted key]" if _is_key(m.group(0)) else m.group(0), text)


def cut(text: str, limit: int = 80) -> str:
    """A value shown in a message: redacted, and at most ``limit`` characters."""
    text = redact(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"
