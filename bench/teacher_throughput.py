"""Teacher-client throughput and fault handling against a real OpenAI-compatible server.

Starts llm-katan's echo back-end on 127.0.0.1 with a fixed latency and sends the same N
requests three ways: sequentially (sync SDK), with a plain ``AsyncOpenAI`` + semaphore loop, and
with domdistill's ``TeacherClient`` (ledger, budget, retries) at the same concurrency. The plain
loop and the client run interleaved ``--repeats`` times (plain, client, plain, client, ...; a
fresh ledger each time) and the ratios are medians of the per-pair ratios, since this machine's
speed drifts between runs. Then the client runs against a server that fails a share of requests
with HTTP 500 and the bench checks that every request was delivered or recorded as failed, none
lost, none charged twice.

The last line printed is ``SUMMARY {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from katan import KatanServer  # noqa: E402

from domdistill.data.example import DomainExample  # noqa: E402
from domdistill.teachers import Budget, Ledger, PromptSet, RetryPolicy, TeacherClient  # noqa: E402
from domdistill.teachers.openai_api import OpenAITeacher  # noqa: E402

KEY_ENV = "DOMDISTILL_BENCH_KEY"


PROMPTS = PromptSet(system="")


def prompts(n: int) -> list[str]:
    return [f"Request {i}: classify this text." for i in range(n)]


def messages(text: str) -> list[dict[str, str]]:
    """Exactly what the client sends for a rationale of ``text``, so all three runs send the same."""
    return [{"role": r, "content": c} for r, c in PROMPTS.rationale_messages(text, None)]


def sequential(base_url: str, n: int) -> float:
    client = openai.OpenAI(base_url=base_url, api_key=os.environ[KEY_ENV], max_retries=0)
    start = time.perf_counter()
    for p in prompts(n):
        client.chat.completions.create(model="teacher", messages=messages(p), max_tokens=64,
                                       temperature=0.0)
    client.close()
    return n / (time.perf_counter() - start)


async def _plain(base_url: str, n: int, concurrency: int) -> float:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=os.environ[KEY_ENV])
    sem = asyncio.Semaphore(concurrency)

    async def one(p: str) -> None:
        async with sem:
            await client.chat.completions.create(
                model="teacher", messages=messages(p), max_tokens=64, temperature=0.0)

    start = time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts(n)))
    rate = n / (time.perf_counter() - start)
    await client.close()
    return rate


def project_client(base_url: str, n: int, concurrency: int, ledger_path: Path,
                   retry: RetryPolicy) -> tuple[float, dict]:
    examples = [DomainExample(f"x{i}", f"d{i % 8}", p, "a") for i, p in enumerate(prompts(n))]
    ledger = Ledger(ledger_path, Budget(calls=n))
    client = TeacherClient(OpenAITeacher("teacher", base_url, KEY_ENV), ledger,
                           PROMPTS, concurrency=concurrency, retry=retry, max_tokens=64)
    start = time.perf_counter()
    batch = client.rationales(examples, with_answer=False, tags={"stage": 1})
    rate = n / (time.perf_counter() - start)
    statuses = {s: sum(r.status == s for r in batch) for s in ("delivered", "failed", "budget_exhausted")}
    spent = ledger.spent()
    client.close()
    return rate, {"statuses": statuses, "spent_calls": spent["calls"]}


def audit(ledger_path: Path, n: int) -> dict:
    """Every request has exactly one row, delivered or failed; charges never exceed one per row."""
    con = sqlite3.connect(ledger_path)
    rows = con.execute("SELECT status, charged, sends FROM calls").fetchall()
    spent = con.execute("SELECT calls FROM spend").fetchone()[0]
    con.close()
    accounted = sum(1 for s, _, _ in rows if s in ("delivered", "failed"))
    charged = sum(c for _, c, _ in rows)
    return {"rows": len(rows), "lost": n - accounted,
            "double_charged": max(0, spent - charged) + sum(1 for _, c, _ in rows if c > 1),
            "delivered": sum(1 for s, _, _ in rows if s == "delivered"),
            "failed": sum(1 for s, _, _ in rows if s == "failed"), "spent_calls": spent,
            "max_sends": max((s for _, _, s in rows), default=0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency-ms", type=int, default=100)
    ap.add_argument("--error-rate", type=float, default=0.2)
    ap.add_argument("--sequential-requests", type=int, default=64,
                    help="requests for the sequential baseline (its rate does not depend on N)")
    ap.add_argument("--repeats", type=int, default=5,
                    help="interleaved plain-loop / client pairs (ratios are per-pair medians)")
    args = ap.parse_args()
    os.environ.setdefault(KEY_ENV, "sk-bench-not-a-real-key")
    n, conc = args.requests, args.concurrency
    ideal = conc / (args.latency_ms / 1000)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        with KatanServer(tmp / "clean.log", "--latency-ms", str(args.latency_ms)) as srv:
            seq = sequential(srv.base_url, args.sequential_requests)
            print(f"sequential (sync SDK):          {seq:8.1f} req/s")
            pairs = []
            for rep in range(args.repeats):
                plain = asyncio.run(_plain(srv.base_url, n, conc))
                ours, info = project_client(srv.base_url, n, conc, tmp / f"clean{rep}.sqlite",
                                            RetryPolicy(6, 0.05, 2.0))
                pairs.append((plain, ours))
                print(f"pair {rep}: AsyncOpenAI + semaphore({conc}) {plain:6.1f} req/s, "
                      f"TeacherClient (ledger, retry) {ours:6.1f} req/s  {info}")
            plain = statistics.median(p for p, _ in pairs)
            ours = statistics.median(o for _, o in pairs)
            vs_plain = statistics.median(o / p for p, o in pairs)
        with KatanServer(tmp / "faulty.log", "--latency-ms", str(args.latency_ms), "--error-rate",
                         str(args.error_rate)) as srv:
            faulty, finfo = project_client(srv.base_url, n, conc, tmp / "faulty.sqlite",
                                           RetryPolicy(6, 0.05, 2.0))
            check = audit(tmp / "faulty.sqlite", n)
            sent = srv.chat_requests()
            print(f"TeacherClient, {args.error_rate:.0%} HTTP 500:   {faulty:8.1f} req/s  {finfo} "
                  f"audit={check} server_requests={sent}")
    summary = {"requests": n, "concurrency": conc, "latency_ms": args.latency_ms,
               "sequential_rps": round(seq, 1), "plain_sdk_rps": round(plain, 1),
               "client_rps": round(ours, 1), "speedup": round(ours / seq, 2),
               "vs_plain_sdk": round(vs_plain, 3), "repeats": args.repeats, "efficiency": round(ours / ideal, 3),
               "plain_sdk_efficiency": round(plain / ideal, 3),
               "faulty_rps": round(faulty, 1), "faulty_delivered": check["delivered"],
               "faulty_failed": check["failed"], "lost": check["lost"],
               "double_charged": check["double_charged"]}
    print("SUMMARY " + json.dumps(summary))


if __name__ == "__main__":
    main()
