"""A real OpenAI-compatible test server: llm-katan's echo back-end on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import urllib.error
import urllib.request

KATAN = Path(sys.executable).with_name("llm-katan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class KatanServer:
    """``llm-katan -b echo`` on a free loopback port; the answer echoes the prompt.

    ``extra`` adds fault flags (``--error-rate``, ``--latency-ms``, ``--rate-limit-after``,
    ``--max-inflight``). ``log`` receives the server's access log, one line per request.
    """

    def __init__(self, log: Path, *extra: str, model: str = "teacher"):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        self.model = model
        self.args = [str(KATAN), "-m", "echo-teacher", "-n", model, "-b", "echo", "--providers",
                     "openai", "-h", "127.0.0.1", "-p", str(self.port), "--max-concurrent", "4096",
                     "--disable-dashboard", "--log-level", "warning",
                     "--stats-file", str(log.with_suffix(".stats.json")), *extra]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "KatanServer":
        self._fh = open(self.log, "ab")
        self.proc = subprocess.Popen(self.args, stdout=self._fh, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llm-katan exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.__exit__()
        raise RuntimeError("llm-katan did not answer within 60 s")

    def chat_requests(self) -> int:
        """Chat-completion requests the server has received (from its access log)."""
        return self.log.read_text(errors="replace").count("POST /v1/chat/completions")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()
