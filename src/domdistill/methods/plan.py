"""The plan of a BalDistill-family run, before any money is spent (``domdistill run --dry-run``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from domdistill.config import RunConfig
from domdistill.data.example import DomainExample
from domdistill.data.templates import StudentTemplate
from domdistill.data.quotas import StagePlan, plan_run
from domdistill.methods.baldistill import RECIPES, plan_budgets
from domdistill.methods.task import Task

CHARS_PER_TOKEN = 4.0  # rough English average, for estimates only
PROMPT_OVERHEAD_TOKENS = 60  # instruction, CoT trigger and answer-format text around the input
ANSWER_SAMPLES = 300  # training answers measured against the generation limits


@dataclass
class RunPlan:
    """Stage plans plus the expected teacher calls, tokens and cost."""

    method: str
    stages: list[StagePlan]
    calls: int
    synthetic: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    coverage: list[dict[str, Any]] | None = None  # recorded teachers: domains it cannot serve in full
    samples: list[DomainExample] = field(default_factory=list, repr=False)  # training-like examples
    rationale: bool = True  # the student trains on rationales (else on answer lines only)
    compute: list[dict[str, Any]] = field(default_factory=list)  # the student's work per stage
    probe: dict[str, float] | None = None  # seconds measured on this machine, when probed

    @property
    def answer_samples(self) -> list[str]:
        """Training completions (rationale and answer line) to measure against generation limits."""
        if not self.rationale:
            return []
        return [StudentTemplate.completion(ex.rationale, ex.answer) for ex in self.samples]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "stages": [s.to_dict() for s in self.stages],
                "expected_calls": self.calls, "synthetic_examples": self.synthetic,
                "estimated_prompt_tokens": self.prompt_tokens,
                "estimated_completion_tokens": self.completion_tokens,
                "estimated_cost": round(self.cost, 4),
                **({"recorded_shortfalls": self.coverage} if self.coverage is not None else {}),
                "student_compute": self.compute,
                **({"probe_seconds": self.probe} if self.probe is not None else {})}


def plan_baldistill(cfg: RunConfig, task: Task) -> RunPlan:
    """Quotas per stage and domain, head/tail per stage, and the expected teacher spend."""
    recipe = RECIPES[cfg.method.name]
    counts = task.pool.counts()
    budgets = plan_budgets(recipe, cfg) if recipe.train else []
    stages = plan_run(recipe.policy, sum(budgets), len(budgets), counts,
                      cfg.method.adaptive_indexing) if budgets else []
    real = sum(sum(p.real.values()) for p in stages)
    short = sum(sum(p.shortfall.values()) for p in stages)
    synthetic = short if recipe.tail == "synthesize" else 0
    calls = real + synthetic * cfg.method.synthesis_cost if recipe.rationale else 0
    mean_input = sum(len(ex.input) for ex in task.pool) / max(len(task.pool), 1) / CHARS_PER_TOKEN
    k = cfg.method.synthesis_exemplars
    prompt_tokens = int(real * (mean_input + PROMPT_OVERHEAD_TOKENS)
                        + synthetic * (k + 1) * (mean_input + PROMPT_OVERHEAD_TOKENS)) if calls else 0
    completion_tokens = calls * cfg.teacher.max_tokens
    cost = (prompt_tokens * cfg.teacher.price_per_1k_input
            + completion_tokens * cfg.teacher.price_per_1k_output) / 1000
    coverage, samples = None, [ex for ex in task.pool if ex.rationale][:ANSWER_SAMPLES]
    if cfg.teacher.kind == "recorded" and recipe.rationale and stages:
        from domdistill.teachers import make_teacher

        teacher = make_teacher(cfg.teacher, real=task.pool)
        coverage = recorded_shortfalls(teacher, task, stages, recipe.tail == "synthesize")
        samples = [replace(ex, rationale=teacher.rationale_by_key[teacher.match_key(ex.input)][0])
                   for ex in task.pool if teacher.has_rationale(ex.input)][:ANSWER_SAMPLES]
    return RunPlan(cfg.method.name, stages, calls, synthetic, prompt_tokens, completion_tokens, cost,
                   coverage, samples, recipe.rationale)


def recorded_shortfalls(teacher: Any, task: Task, stages: list[StagePlan], synthesize: bool
                        ) -> list[dict[str, Any]]:
    """The domains a recorded teacher cannot serve in full, one row each: pool inputs with a
    recorded rationale against the rationale calls planned, recorded synthetic examples against
    those planned, and how many requests are expected to find no record. Such a request fails
    (it is not charged); a stage where more than ``teacher.max_failure_rate`` of the requests
    fail stops the run (exit 2, resumable), else the run finishes with fewer examples and says so."""
    rows = []
    for domain, pool in task.pool.by_domain.items():
        recorded = sum(teacher.has_rationale(ex.input) for ex in pool)
        calls = sum(s.real.get(domain, 0) for s in stages)
        wanted = sum(s.shortfall.get(domain, 0) for s in stages) if synthesize else 0
        have = len(teacher.synthetic.get(domain, []))
        # selection does not know the records: a chosen input lacks one with the pool's odds
        missing = round(calls * (1 - recorded / len(pool))) if pool else calls
        missing += max(0, wanted - have)
        if missing:
            rows.append({"domain": domain, "pool": len(pool), "with_rationale": recorded,
                         "rationale_calls": calls, "synthetic_recorded": have,
                         "synthetic_planned": wanted, "expected_without_record": missing})
    return rows
