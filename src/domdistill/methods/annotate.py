"""The teacher side of one BalDistill stage: rationales for chosen inputs, tail examples.

Every call goes through the run's ledger, so a rerun of a stage after a crash is served from it
and nothing is paid twice. Synthetic examples are numbered per domain across stages (the number is
part of the request), which keeps their cache keys stable when a stage is replayed.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from typing import Any

from domdistill.config import RunConfig
from domdistill.data.example import DomainExample
from domdistill.data.quotas import StagePlan
from domdistill.errors import TeacherError
from domdistill.methods.task import Task
from domdistill.runs import RunDir
from domdistill.teachers.results import Batch
from domdistill.teachers.spend import ledger_report


class Annotator:
    """Turns a stage's chosen inputs and tail shortfalls into annotated training examples."""

    def __init__(self, cfg: RunConfig, run_dir: RunDir, task: Task):
        from domdistill.teachers import open_client

        self.cfg, self.task = cfg, task
        self.client = open_client(cfg.teacher, run_dir.root, cfg.method.budget, task.task,
                                  task.labels, synthesis_cost=cfg.method.synthesis_cost,
                                  real=task.pool, seed=cfg.data.seed)
        self.filter = cfg.method.answer_filter
        self.max_failure_rate = cfg.teacher.max_failure_rate
        self._missing_before = 0

    def close(self) -> None:
        self.client.close()

    def annotate_stage(self, stage: int, plan: StagePlan, chosen: dict[str, list[DomainExample]],
                       real: list[DomainExample], tail_mode: str, rng: random.Random,
                       synth_start: dict[str, int]) -> tuple[list[DomainExample], dict[str, Any]]:
        """Annotated examples of this stage and what they cost; ``synth_start`` numbers synthesis."""
        tags = {"stage": stage}
        results = self.client.rationales(real, with_answer=True, tags=tags)
        results.raise_if_stopped()
        batches = [results]
        batch: list[DomainExample] = []
        dropped = Counter()
        for r in results.usable:
            if self.filter and not r.correct:
                dropped["real"] += 1
                continue
            batch.append(replace(r.example, rationale=r.text,
                                 metadata={**r.example.metadata, "source": "teacher"}))
        synthetic = 0
        for d, short in plan.shortfall.items():
            if short <= 0:
                continue
            if tail_mode == "duplicate":
                batch.extend(self._duplicates(d, short, [ex for ex in batch if ex.domain == d]))
            elif tail_mode == "synthesize":
                made, drop, done = self._synthesize(d, short, rng, synth_start.get(d, 0), tags)
                synth_start[d] = synth_start.get(d, 0) + short
                batch.extend(made)
                synthetic += len(made)
                dropped["synthetic"] += drop
                batches.append(done)
        missing_logprobs = self.client.missing_logprobs - self._missing_before
        self._missing_before = self.client.missing_logprobs
        requests = sum(len(b) for b in batches)
        failed = [r for b in batches for r in b.failed]
        unusable = sum(len(b.delivered) - len(b.usable) for b in batches)
        self._check_failures(stage, requests, failed)
        spend = {"real": len(real), "synthetic": synthetic, "requests": requests,
                 "failed": len(failed), "unusable": unusable, "dropped_by_filter": dict(dropped),
                 "examples": len(batch), "missing_logprobs": missing_logprobs}
        return batch, spend

    def _check_failures(self, stage: int, requests: int, failed: list) -> None:
        """Stop the run (before anything is trained on the stage) when too many calls failed."""
        if not failed or len(failed) <= self.max_failure_rate * requests:
            return
        raise TeacherError(
            f"stage {stage}: {len(failed)} of {requests} teacher requests failed "
            f"({len(failed) / requests:.0%}, above teacher.max_failure_rate = "
            f"{self.max_failure_rate:.0%}); for example: {failed[0].error}. Failed requests that "
            "cannot have been billed were not charged. Nothing was trained on this stage; fix the "
            "teacher and run the same command with --resume: delivered answers are reused and "
            "only the failed requests are sent again.")

    def _synthesize(self, domain: str, n: int, rng: random.Random, start: int,
                    tags: dict) -> tuple[list[DomainExample], int, Batch]:
        pool = self.task.pool.by_domain.get(domain, [])
        k = min(self.cfg.method.synthesis_exemplars, len(pool))
        exemplars = rng.sample(pool, k) if k else []
        results = self.client.synthesize(domain, exemplars, n, tags=tags, start=start)
        results.raise_if_stopped()
        made, dropped = [], 0
        for r in results.usable:
            if r.example is None or (self.filter and not r.agrees):
                dropped += 1
                continue
            made.append(replace(r.example, metadata={**r.example.metadata, "source": "synthetic"}))
        return made, dropped, results

    @staticmethod
    def _duplicates(domain: str, n: int, annotated: list[DomainExample]) -> list[DomainExample]:
        """Fill a tail domain by repeating its annotated real examples (Duplicate FT CoT)."""
        if not annotated:
            return []
        return [replace(annotated[i % len(annotated)], id=f"{annotated[i % len(annotated)].id}#dup{i}",
                        metadata={**annotated[i % len(annotated)].metadata, "source": "duplicate"})
                for i in range(n)]


def ledger_spend(run_dir: RunDir) -> dict[str, Any]:
    """Charged calls in total, by domain and by stage, read from the run's ledger."""
    if not run_dir.ledger.is_file():
        return {"spent": 0, "by_domain": {}, "by_stage": []}
    report = ledger_report(run_dir.root)
    by_stage = report["by_stage"]
    last = max((int(s) for s in by_stage if s.isdigit()), default=0)
    totals = report["totals"]
    return {"spent": int(report["spent"]["calls"] or 0),
            "failed": int(totals["failed"] or 0), "possibly_billed": int(totals["possibly_billed"] or 0),
            "unusable": int(totals["unusable"] or 0), "in_flight": int(totals["inflight"] or 0),
            "by_domain": {d: int(v["charged"] or 0) for d, v in report["by_domain"].items()},
            "by_stage": [int(by_stage.get(str(s), {}).get("charged") or 0) for s in range(1, last + 1)]}
