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
from domdistill.methods.task import Task
from domdistill.runs import RunDir


class Annotator:
    """Turns a stage's chosen inputs and tail shortfalls into annotated training examples."""

    def __init__(self, cfg: RunConfig, run_dir: RunDir, task: Task):
        from domdistill.teachers import open_client

        self.cfg, self.task = cfg, task
        self.client = open_client(cfg.teacher, run_dir.root, cfg.method.budget, task.task,
                                  task.labels, synthesis_cost=cfg.method.synthesis_cost,
                                  real=task.pool, seed=cfg.data.seed)
        self.filter = cfg.method.answer_filter

    def close(self) -> None:
        self.client.close()

    def annotate_stage(self, stage: int, plan: StagePlan, chosen: dict[str, list[DomainExample]],
                       real: list[DomainExample], tail_mode: str, rng: random.Random,
                       synth_start: dict[str, int]) -> tuple[list[DomainExample], dict[str, Any]]:
        """Annotated examples of this stage and what they cost; ``synth_start`` numbers synthesis."""
        tags = {"stage": stage}
        results = self.client.rationales(real, with_answer=True, tags=tags)
        results.raise_if_stopped()
        batch: list[DomainExample] = []
        dropped = Counter()
        for r in results.delivered:
            if self.filter and not r.correct:
                dropped["real"] += 1
                continue
            batch.append(replace(r.example, rationale=r.text,
                                 metadata={**r.example.metadata, "source": "teacher"}))
        failed = len(results) - len(results.delivered)
        synthetic = 0
        for d, short in plan.shortfall.items():
            if short <= 0:
                continue
            if tail_mode == "duplicate":
                batch.extend(self._duplicates(d, short, [ex for ex in batch if ex.domain == d]))
            elif tail_mode == "synthesize":
                made, drop, fail = self._synthesize(d, short, rng, synth_start.get(d, 0), tags)
                synth_start[d] = synth_start.get(d, 0) + short
                batch.extend(made)
                synthetic += len(made)
                dropped["synthetic"] += drop
                failed += fail
        spend = {"real": len(real), "synthetic": synthetic, "failed": failed,
                 "dropped_by_filter": dict(dropped), "examples": len(batch)}
        return batch, spend

    def _synthesize(self, domain: str, n: int, rng: random.Random, start: int, tags: dict):
        pool = self.task.pool.by_domain.get(domain, [])
        k = min(self.cfg.method.synthesis_exemplars, len(pool))
        exemplars = rng.sample(pool, k) if k else []
        results = self.client.synthesize(domain, exemplars, n, tags=tags, start=start)
        results.raise_if_stopped()
        made, dropped = [], 0
        for r in results.delivered:
            if r.example is None or (self.filter and not r.agrees):
                dropped += 1
                continue
            made.append(replace(r.example, metadata={**r.example.metadata, "source": "synthetic"}))
        return made, dropped, len(results) - len(results.delivered)

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
    from domdistill.cli.ledger import ledger_report

    if not run_dir.ledger.is_file():
        return {"spent": 0, "by_domain": {}, "by_stage": []}
    report = ledger_report(run_dir.root)
    by_stage = report["by_stage"]
    last = max((int(s) for s in by_stage if s.isdigit()), default=0)
    return {"spent": int(report["spent"]["calls"] or 0),
            "by_domain": {d: int(v["charged"] or 0) for d, v in report["by_domain"].items()},
            "by_stage": [int(by_stage.get(str(s), {}).get("charged") or 0) for s in range(1, last + 1)]}
