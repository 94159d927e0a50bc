"""The plan of a BalDistill-family run, before any money is spent (``domdistill run --dry-run``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from domdistill.config import RunConfig
from domdistill.data.quotas import StagePlan, plan_run
from domdistill.methods.baldistill import RECIPES, plan_budgets
from domdistill.methods.task import Task

CHARS_PER_TOKEN = 4.0  # rough English average, for estimates only
PROMPT_OVERHEAD_TOKENS = 60  # instruction, CoT trigger and answer-format text around the input


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

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "stages": [s.to_dict() for s in self.stages],
                "expected_calls": self.calls, "synthetic_examples": self.synthetic,
                "estimated_prompt_tokens": self.prompt_tokens,
                "estimated_completion_tokens": self.completion_tokens,
                "estimated_cost": round(self.cost, 4)}


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
    return RunPlan(cfg.method.name, stages, calls, synthetic, prompt_tokens, completion_tokens, cost)
