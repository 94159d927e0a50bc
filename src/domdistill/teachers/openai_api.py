"""Teacher behind an OpenAI-compatible chat-completions API (``openai.AsyncOpenAI``).

The SDK's own retries are off (``max_retries=0``): the client's one retry layer decides. The
API key is read from a named environment variable and never leaves this object: error text is
redacted before it is raised.
"""

from __future__ import annotations

import os
import time
from typing import Any

import openai

from domdistill.errors import ConfigError
from domdistill.teachers.base import CallError, TeacherRequest, TeacherResponse
from domdistill.teachers.retry import redact

_STOP_CODES = {"insufficient_quota", "invalid_api_key", "billing_hard_limit_reached"}


class OpenAITeacher:
    """Chat completions on ``base_url`` with ``model``; key from ``$api_key_env``."""

    max_batch = 1

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 timeout_s: float = 120.0):
        key = os.environ.get(api_key_env)
        if not key:
            raise ConfigError(f"environment variable ${api_key_env} holding the API key is not set",
                              field="teacher.api_key_env")
        self.model = model
        self.teacher_id = f"openai:{model}"
        self._secret = key
        self._client = openai.AsyncOpenAI(api_key=key, base_url=base_url, max_retries=0,
                                          timeout=timeout_s)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAITeacher(model={self.model!r})"

    async def complete(self, requests: list[TeacherRequest]) -> list[TeacherResponse]:
        return [await self._one(r) for r in requests]

    async def _one(self, req: TeacherRequest) -> TeacherResponse:
        params: dict[str, Any] = {k: v for k, v in req.sampling.items() if k != "seed"}
        top = params.pop("top_logprobs", None)
        if top:
            params.update(logprobs=True, top_logprobs=int(top))
        try:
            resp = await self._client.chat.completions.create(
                model=self.model, messages=req.chat, **params)  # type: ignore[arg-type]
        except openai.APIStatusError as e:
            raise self._classify_status(e) from None
        except openai.APITimeoutError:
            raise CallError("request timed out", retryable=True, maybe_billed=True) from None
        except openai.APIConnectionError as e:
            raise CallError(self._clean(f"connection error: {e}"), retryable=True,
                            maybe_billed=True) from None
        except (ValueError, openai.APIResponseValidationError) as e:  # a body that is not a completion
            raise CallError(self._clean(f"unreadable response body ({type(e).__name__}: {e})"),
                            retryable=True, maybe_billed=True) from None
        choice = resp.choices[0] if resp.choices else None
        if choice is None or not (choice.message.content or "").strip():
            raise CallError("the server answered with an empty completion", retryable=True,
                            maybe_billed=True)
        usage = resp.usage
        logprobs = None
        if choice.logprobs is not None and choice.logprobs.content:
            logprobs = [[(t.token, t.logprob) for t in tok.top_logprobs] or [(tok.token, tok.logprob)]
                        for tok in choice.logprobs.content]
        return TeacherResponse(text=choice.message.content,
                               prompt_tokens=usage.prompt_tokens if usage else 0,
                               completion_tokens=usage.completion_tokens if usage else 0,
                               logprobs=logprobs)

    def _clean(self, text: str) -> str:
        return redact(text, [self._secret])

    def _classify_status(self, e: openai.APIStatusError) -> CallError:
        status = e.status_code
        code = (e.body or {}).get("code") if isinstance(e.body, dict) else getattr(e, "code", None)
        msg = self._clean(f"HTTP {status}: {e.message}")
        retry_after = _retry_after(e.response.headers) if e.response is not None else None
        if status in (401, 403) or code in _STOP_CODES:
            return CallError(msg, status=status, stop=True)
        if status == 429:
            return CallError(msg, status=status, retryable=True, retry_after=retry_after,
                             rate_limited=True)
        if status in (408, 409) or status >= 500:
            return CallError(msg, status=status, retryable=True, retry_after=retry_after,
                             maybe_billed=status in (408, 504))
        return CallError(msg, status=status)

    async def aclose(self) -> None:
        await self._client.close()


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date), if present."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None
