"""An OpenAI-compatible chat-completions server that answers the built-in task with the program
teacher's solutions, with optional fault injection (for tests and benchmarks; loopback only).

Rationale prompts are answered by solving the first line of the user message that is a built-in
question; synthesis prompts (``domain "D" (new example number N)``) by the example the program
teacher makes for ``(seed, D, N-1)``. Faults are drawn per request from a seeded generator::

    python -m domdistill.teachers.program_server --port 8123 --error-rate 0.2 --log requests.jsonl

Every request is appended to ``--log`` as one JSON line (``{"n", "outcome", "user"}``) before the
answer is written, so counts survive a killed server.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from domdistill.data import builtin
from domdistill.errors import InputError
from domdistill.teachers.prompts import with_final_answer

_SYNTH = re.compile(r'domain "([^"]+)" \(new example number (\d+)\)')
OUTCOMES = ("ok", "error", "rate_limited", "slow", "malformed", "empty", "garbled", "unauthorized")
GARBLED = "Sure! Here is what you asked for, in my own words."


@dataclass
class Faults:
    """Per-request fault probabilities (drawn in this order) and fixed behaviours."""

    error_rate: float = 0.0         # HTTP 500
    rate_limit_rate: float = 0.0    # HTTP 429 with Retry-After
    slow_rate: float = 0.0          # answer after ``slow_s`` (past the client's timeout)
    malformed_rate: float = 0.0     # HTTP 200 with a truncated JSON body
    empty_rate: float = 0.0         # HTTP 200 with an empty or whitespace-only completion
    garbled_rate: float = 0.0       # HTTP 200 with a reply that has no answer line
    rate_limit_after: int | None = None  # every request after the N-th: 429, for good
    retry_after_s: float = 0.05
    slow_s: float = 2.0
    latency_s: float = 0.0
    seed: int = 0

    def draw(self, rng: random.Random, n: int) -> str:
        if self.rate_limit_after is not None and n > self.rate_limit_after:
            return "rate_limited"
        x = rng.random()
        for outcome, p in (("error", self.error_rate), ("rate_limited", self.rate_limit_rate),
                           ("slow", self.slow_rate), ("malformed", self.malformed_rate),
                           ("empty", self.empty_rate), ("garbled", self.garbled_rate)):
            if x < p:
                return outcome
            x -= p
        return "ok"


def answer(user: str, seed: int = 0) -> str:
    """The program teacher's reply to a rationale or synthesis prompt of the built-in task."""
    m = _SYNTH.search(user)
    if m:
        domain, index = m.group(1), int(m.group(2)) - 1
        ex = builtin.make_example(domain, random.Random(f"{seed}:{domain}:{index}"),
                                  f"{domain}/synthetic-{index}")
        if "Reasoning:" in user:
            return f"Input: {ex.input}\nReasoning: {ex.rationale}\nThe answer is: {ex.answer}"
        return f"Input: {ex.input}\nThe answer is: {ex.answer}"
    for line in user.splitlines():
        for domain in builtin.BUILTIN_DOMAINS:
            try:
                rationale, ans = builtin.solve(domain, line)
            except InputError:
                continue
            return with_final_answer(rationale, ans)
    return "I cannot solve this question.\nThe answer is: unknown"


class ProgramServer:
    """The server on ``127.0.0.1:port`` in a background thread (``port=0``: a free one)."""

    def __init__(self, port: int = 0, faults: Faults | None = None, api_key: str | None = None,
                 log: str | Path | None = None, seed: int = 0, model: str = "teacher",
                 strict_model: bool = False):
        self.faults = faults or Faults()
        self.api_key, self.seed, self.model = api_key, seed, model
        self.strict_model = strict_model  # other model names: HTTP 400 with a FastAPI ``detail``
        self.log = Path(log) if log else None
        self.counts = {k: 0 for k in OUTCOMES}
        self._rng = random.Random(self.faults.seed)
        self._lock = threading.Lock()
        self._n = 0
        self.httpd = _QuietServer(("127.0.0.1", port), _handler(self))
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread: threading.Thread | None = None

    @property
    def requests(self) -> int:
        return sum(self.counts.values())

    def start(self) -> "ProgramServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="program-server",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> "ProgramServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def decide(self, authorization: str | None, user: str) -> tuple[int, str]:
        """Request number and outcome; recorded (counted, logged) before anything is answered."""
        with self._lock:
            self._n += 1
            n = self._n
            if self.api_key is not None and authorization != f"Bearer {self.api_key}":
                outcome = "unauthorized"
            else:
                outcome = self.faults.draw(self._rng, n)
            self.counts[outcome] += 1
            if self.log is not None:
                with open(self.log, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"n": n, "outcome": outcome, "user": user[-200:]}) + "\n")
        return n, outcome


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up (timeout, killed run) is normal here: no traceback."""


def _completion(model: str, n: int, text: str | None) -> dict[str, Any]:
    return {"id": f"chatcmpl-{n}", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": len((text or "").split()),
                      "total_tokens": 10 + len((text or "").split())}}


def _handler(server: ProgramServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                pass

        def _error(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None):
            body = {"error": {"message": message, "type": kind, "code": kind}}
            self._send(status, json.dumps(body).encode(), headers)

        def do_GET(self) -> None:
            if self.path.rstrip("/") in ("/health", "/v1/models"):
                self._send(200, json.dumps({"object": "list", "data": [
                    {"id": server.model, "object": "model"}]}).encode())
            else:
                self._error(404, f"no route {self.path}", "not_found")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._error(404, f"no route {self.path}", "not_found")
                return
            try:
                body = json.loads(raw)
                user = [m.get("content") or "" for m in body["messages"] if m.get("role") == "user"][-1]
            except (ValueError, KeyError, IndexError, TypeError, AttributeError):
                self._error(400, "expected a JSON body with a user message", "invalid_request_error")
                return
            if server.strict_model and body.get("model") != server.model:  # as transformers serve
                detail = {"detail": f"Server is pinned to model '{server.model}', but the request "
                                    f"asked for '{body.get('model')}'"}
                self._send(400, json.dumps(detail).encode())
                return
            n, outcome = server.decide(self.headers.get("Authorization"), user)
            f = server.faults
            if f.latency_s:
                time.sleep(f.latency_s)
            if outcome == "unauthorized":
                sent = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                self._error(401, f"Incorrect API key provided: {sent}.", "invalid_api_key")
            elif outcome == "error":
                self._error(500, "injected server error", "server_error")
            elif outcome == "rate_limited":
                self._error(429, "injected rate limit", "rate_limit_exceeded",
                            {"Retry-After": f"{f.retry_after_s:g}"})
            elif outcome == "malformed":
                self._send(200, b'{"id": "chatcmpl-broken", "choices": [{"index": 0, "mess')
            elif outcome == "garbled":
                self._send(200, json.dumps(_completion(server.model, n, GARBLED)).encode())
            elif outcome == "empty":
                text = ("", None, " \n\t ")[n % 3]
                self._send(200, json.dumps(_completion(server.model, n, text)).encode())
            else:
                if outcome == "slow":
                    time.sleep(f.slow_s)
                text = answer(user, server.seed)
                self._send(200, json.dumps(_completion(server.model, n, text)).encode())

    return Handler


def spawn(port: int, *flags: str, log: str | Path | None = None) -> subprocess.Popen:
    """The server as a process of its own on ``port`` (so that it can be SIGKILLed), once it
    serves. ``flags`` are this module's command-line options."""
    cmd = [sys.executable, "-m", "domdistill.teachers.program_server", "--port", str(port), *flags]
    proc = subprocess.Popen(cmd + (["--log", str(log)] if log else []), stdout=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if "serving" not in line:
        proc.kill()
        raise RuntimeError(f"the program server did not start on port {port}: {line!r}")
    return proc


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    p.add_argument("--api-key", default=None, help="require this bearer key (401 otherwise)")
    p.add_argument("--log", default=None, help="append one JSON line per request here")
    p.add_argument("--seed", type=int, default=0, help="the program teacher's seed (data.seed)")
    p.add_argument("--model", default="teacher")
    p.add_argument("--strict-model", action="store_true",
                   help="answer HTTP 400 to any other model name (as transformers serve does)")
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--rate-limit-rate", type=float, default=0.0)
    p.add_argument("--slow-rate", type=float, default=0.0)
    p.add_argument("--malformed-rate", type=float, default=0.0)
    p.add_argument("--empty-rate", type=float, default=0.0)
    p.add_argument("--garbled-rate", type=float, default=0.0)
    p.add_argument("--rate-limit-after", type=int, default=None)
    p.add_argument("--retry-after-s", type=float, default=0.05)
    p.add_argument("--slow-s", type=float, default=2.0)
    p.add_argument("--latency-s", type=float, default=0.0)
    p.add_argument("--fault-seed", type=int, default=0)
    a = p.parse_args(argv)
    faults = Faults(a.error_rate, a.rate_limit_rate, a.slow_rate, a.malformed_rate, a.empty_rate,
                    a.garbled_rate, a.rate_limit_after, a.retry_after_s, a.slow_s, a.latency_s,
                    a.fault_seed)
    server = ProgramServer(a.port, faults, a.api_key, a.log, a.seed, a.model, a.strict_model)
    print(f"serving {server.base_url}", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()


if __name__ == "__main__":
    main()
