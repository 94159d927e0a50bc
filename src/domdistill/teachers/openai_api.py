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
from domdistill.redact import redact, remember
from domdistill.teachers.base import CallError, TeacherRequest, TeacherResponse

_STOP_CODES = {"insufficient_quota", "invalid_api_key", "billing_hard_limit_reached"}
# transport errors raised before the request was fully sent: the server cannot have billed it
_NEVER_SENT = {"ConnectError", "ConnectTimeout", "PoolTimeout", "WriteError", "WriteTimeout",
               "UnsupportedProtocol", "LocalProtocolError", "ProxyError", "InvalidURL"}
# rejections that will meet every request of the batch, and what to check
_HINTS = {
    400: "Check teacher.model (a server may accept only its own model name: GET .../v1/models "
         "lists them) and the request parameters (teacher.temperature, max_tokens, top_logprobs)",
    404: "Check teacher.base_url (OpenAI-compatible servers serve under /v1, e.g. "
         "http://127.0.0.1:8000/v1) and teacher.model",
    405: "Check teacher.base_url: it should be the API's base, e.g. http://127.0.0.1:8000/v1",
    422: "The server refused the request's fields: check teacher.model and the request "
         "parameters (teacher.temperature, max_tokens, top_logprobs)",
}


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
        self.api_key_env, self.timeout_s = api_key_env, timeout_s
        self._secret = key
        remember(key, f"${api_key_env}")
        self._client = openai.AsyncOpenAI(api_key=key, base_url=base_url, max_retries=0,
                                          timeout=timeout_s)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAITeacher(model={self.model!r})"

    async def complete(self, requests: list[TeacherRequest]) -> list[TeacherResponse]:
        return [await self._one(r) for r in requests]

    @property
    def endpoint(self) -> str:
        """The URL requests go to, for messages (no user, password or query string)."""
        url = self._client.base_url
        port = f":{url.port}" if url.port else ""
        return f"{url.scheme}://{url.host}{port}{url.path.rstrip('/')}/chat/completions"

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
        except (openai.APITimeoutError, openai.APIConnectionError) as e:
            raise self._classify_transport(e) from None
        except (ValueError, openai.APIResponseValidationError) as e:  # a body that is not a completion
            raise CallError(self._clean(f"unreadable response body from {self.endpoint} "
                                        f"({type(e).__name__}: {e})"), retryable=True,
                            maybe_billed=True, billing="possibly billed: the server answered "
                            "with an unreadable body") from None
        choice = resp.choices[0] if resp.choices else None
        if choice is None:
            raise CallError(f"the server at {self.endpoint} answered with no choices",
                            retryable=True, maybe_billed=True,
                            billing="possibly billed: an answer with no choices")
        usage = resp.usage
        logprobs = None
        if choice.logprobs is not None and choice.logprobs.content:
            logprobs = [[(t.token, t.logprob) for t in tok.top_logprobs] or [(tok.token, tok.logprob)]
                        for tok in choice.logprobs.content]
        return TeacherResponse(text=choice.message.content or "",
                               prompt_tokens=usage.prompt_tokens if usage else 0,
                               completion_tokens=usage.completion_tokens if usage else 0,
                               logprobs=logprobs)

    @staticmethod
    def _clean(text: str) -> str:
        return redact(text)

    def _classify_transport(self, e: openai.APIConnectionError) -> CallError:
        """Connection errors and timeouts, by whether the request can have reached the server."""
        cause = _transport_cause(e)
        name = type(cause).__name__ if cause is not None else type(e).__name__
        detail = self._clean(str(cause) or name) if cause is not None else name
        if name in _NEVER_SENT:
            return CallError(f"cannot reach {self.endpoint} ({name}: {detail}): check that the "
                             "server is running and teacher.base_url", retryable=True,
                             outage=True, billing=f"not billed: never reached the server ({name})")
        if isinstance(e, openai.APITimeoutError):
            return CallError(f"no answer from {self.endpoint} within teacher.timeout_s = "
                             f"{self.timeout_s:g} s", retryable=True, outage=True, maybe_billed=True,
                             billing=f"possibly billed: sent, then timed out ({name})")
        return CallError(f"connection to {self.endpoint} lost after the request was sent "
                         f"({name}: {detail})", retryable=True, outage=True, maybe_billed=True,
                         billing=f"possibly billed: sent, then the connection was lost ({name})")

    def _classify_status(self, e: openai.APIStatusError) -> CallError:
        status = e.status_code
        body = e.body if isinstance(e.body, dict) else {}
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        code = error.get("code") or body.get("code") or getattr(e, "code", None)
        reason = _server_reason(e.body, e.response.text if e.response is not None else "")
        where = f"HTTP {status} from {self.endpoint} (model {self.model!r})"
        msg = self._clean(f"{where}: {reason}" if reason else where)
        retry_after = _retry_after(e.response.headers) if e.response is not None else None
        refused = f"not billed: rejected before generation (HTTP {status})"
        if status in (401, 403) or code in _STOP_CODES:
            return CallError(f"{msg}. Check the API key in ${self.api_key_env} and the account's "
                             "quota", status=status, stop=True, billing=refused)
        if status == 429:
            return CallError(msg, status=status, retryable=True, retry_after=retry_after,
                             rate_limited=True, billing=refused)
        if status in (408, 504):  # the server or a gateway gave up waiting: outcome unknown
            return CallError(msg, status=status, retryable=True, retry_after=retry_after,
                             outage=True, maybe_billed=True,
                             billing=f"possibly billed: timed out at the server (HTTP {status})")
        if status == 409 or status >= 500:
            return CallError(msg, status=status, retryable=True, retry_after=retry_after,
                             outage=status >= 500, billing=refused)
        hint = _HINTS.get(status)
        return CallError(f"{msg}. {hint}" if hint else msg, status=status,
                         systematic=status in _HINTS, billing=refused)

    async def aclose(self) -> None:
        await self._client.close()


def _transport_cause(e: BaseException) -> BaseException | None:
    """The HTTP library's exception behind an SDK connection error (httpx and its successors)."""
    seen = e.__cause__ or e.__context__
    while seen is not None and type(seen).__module__.split(".")[0] in ("openai",):
        seen = seen.__cause__ or seen.__context__
    return seen


def _server_reason(body: Any, text: str) -> str:
    """The server's own words: ``error.message`` (OpenAI, vLLM), ``detail`` (FastAPI servers such
    as ``transformers serve``), ``message``, or the start of the raw body."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str) and err:
            return err
        detail = body.get("detail")
        if isinstance(detail, list):  # FastAPI validation errors
            return "; ".join(f"{'.'.join(str(x) for x in d.get('loc', []))}: {d.get('msg')}"
                             if isinstance(d, dict) else str(d) for d in detail)
        if detail:
            return str(detail)
        if body.get("message"):
            return str(body["message"])
    text = " ".join((text or "").split())
    return text[:300] + ("..." if len(text) > 300 else "")


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
