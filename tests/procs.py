"""Run a test worker and SIGKILL it, with every process it started, at a chosen stderr line."""

from __future__ import annotations

import signal
import socket
import subprocess

import psutil


def kill_tree(pid: int) -> bool:
    """SIGKILL ``pid`` and all its descendants (a launcher's workers run in sessions of their own,
    so a process-group kill would miss them); True if anything was killed."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)
    return True


def run_until(cmd: list[str], env: dict[str, str], kill_on: str | None = None,
              timeout: float = 120) -> bool:
    """Run ``cmd``; kill it when a stderr line starts with ``kill_on``. True if killed; a run
    that ends by itself must exit 0 (its last stderr lines are the assertion message)."""
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if kill_on and line.startswith(kill_on):
                return kill_tree(proc.pid)
        assert proc.wait(timeout=timeout) == 0, "".join(lines[-30:])
        return False
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
        proc.wait(timeout=60)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (a launcher's rendezvous port; fixed
    ports collide with a run still closing its sockets)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
