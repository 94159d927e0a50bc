"""BalDistill and its baselines as one staged recipe (``methods.md`` section 1).

Each stage: quotas per domain from a balancing policy -> head domains pick the inputs the student
is least sure of (IFD on its own rationale; random in stage 1) -> tail domains get all their
remaining real inputs plus teacher-synthesized examples for the shortfall -> the teacher writes
rationales -> wrong-answer filter -> the student is retrained on everything so far -> evaluated.
The method state is saved after every stage; teacher calls live in the ledger, so a crashed run
resumes without paying any call twice.

Under ``accelerate launch`` / ``torchrun`` the main process owns the run folder, the state, the
ledger and every teacher call, and hands its decisions (selection, annotated batch) or its error
to the others; every process fine-tunes (the Trainer's DDP) and scores and evaluates its share of
the batches (:func:`domdistill.distributed.sharded`).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from domdistill import distributed as dist
from domdistill.config import RunConfig
from domdistill.data.domains import HEAD_TAIL_RULE, report_head_tail
from domdistill.data.example import DomainExample
from domdistill.data.quotas import Policy, StagePlan, plan_stage, stage_budgets
from domdistill.errors import TeacherError
from domdistill.io import atomic_write_json, read_json
from domdistill.methods.task import Task
from domdistill.progress import say
from domdistill.runs import RunDir


@dataclass(frozen=True)
class Recipe:
    """What distinguishes BalDistill and each baseline."""

    staged: bool                      # K stages (else one stage with the whole budget)
    policy: Policy                    # how the stage budget is split over domains
    selection: Literal["random", "score"]
    tail: Literal["none", "synthesize", "duplicate"]
    rationale: bool = True            # train on teacher rationales (else gold labels only)
    pool_wide: bool = False           # score-rank the whole pool at once (Active FT CoT)
    train: bool = True


RECIPES: dict[str, Recipe] = {
    "zero_shot_cot": Recipe(False, "random", "random", "none", train=False),
    "random_ft": Recipe(False, "random", "random", "none", rationale=False),
    "random_ft_cot": Recipe(False, "random", "random", "none"),
    "duplicate_ft_cot": Recipe(False, "duplicate", "random", "duplicate"),
    "balance_ft_cot": Recipe(False, "naive", "random", "synthesize"),
    "active_ft_cot": Recipe(True, "random", "score", "none", pool_wide=True),
    "baldistill_n": Recipe(True, "naive", "score", "synthesize"),
    "baldistill_a": Recipe(True, "adaptive", "score", "synthesize"),
}


PHASES = ("score", "teacher", "train", "eval")  # seconds of each, per stage and in all


@dataclass
class State:
    """Everything the recipe decided so far; saved after each stage as ``state.json``."""

    stage: int = 0
    pool: list[str] = field(default_factory=list)            # ids not yet annotated
    train: list[dict[str, Any]] = field(default_factory=list)  # annotated examples (to_dict)
    stages: list[dict[str, Any]] = field(default_factory=list)  # plan, selections, spend, metrics
    synthesized: dict[str, int] = field(default_factory=dict)  # synthesis requests per domain
    elapsed: float = 0.0  # wall seconds of the stages finished, over every invocation
    ledger: dict[str, Any] = field(default_factory=dict)  # ledger id and counts at the last save

    @classmethod
    def load(cls, path: Path) -> "State | None":
        from domdistill.errors import RunFolderError

        raw = read_json(path, "the run's state")
        if raw is None:
            return None
        try:
            return cls(**raw)
        except TypeError:
            raise RunFolderError(f"{path}: not a state file of this method (fields: "
                                 f"{', '.join(list(raw)[:8]) if isinstance(raw, dict) else type(raw).__name__}); "
                                 "restore it, or start over with --overwrite") from None

    def save(self, path: Path) -> None:
        atomic_write_json(path, self.__dict__)


def select_head(plan: StagePlan, pool: dict[str, list[DomainExample]], recipe: Recipe,
                scores: dict[str, float] | None, rng: random.Random) -> dict[str, list[DomainExample]]:
    """Inputs chosen for annotation in each domain (tail domains take all that is left)."""
    chosen: dict[str, list[DomainExample]] = {}
    if recipe.pool_wide and scores is not None:
        everything = [ex for exs in pool.values() for ex in exs]
        ranked = sorted(everything, key=lambda ex: (-scores[ex.id], ex.id))[:plan.budget]
        for ex in ranked:
            chosen.setdefault(ex.domain, []).append(ex)
        return chosen
    for d, q in plan.quotas.items():
        exs = pool.get(d, [])
        if d in plan.tail or q >= len(exs):
            chosen[d] = list(exs)
        elif scores is not None:
            chosen[d] = sorted(exs, key=lambda ex: (-scores[ex.id], ex.id))[:q]
        else:
            chosen[d] = rng.sample(exs, q)
    return chosen


def stage_plan(recipe: Recipe, cfg: RunConfig, stage: int, stages: int, budget: int,
               pool: dict[str, list[DomainExample]], original: dict[str, int]) -> StagePlan:
    counts = {d: len(pool.get(d, [])) for d in original}
    return plan_stage(recipe.policy, budget, stage, stages, counts, original,
                      cfg.method.adaptive_indexing)


def plan_budgets(recipe: Recipe, cfg: RunConfig) -> list[int]:
    """Teacher calls per stage (one stage with everything for single-round baselines)."""
    stages = cfg.method.stages if recipe.staged else 1
    return stage_budgets(cfg.method.budget, stages)


class BalDistillRun:
    """One run of BalDistill or a baseline; ``run()`` walks all stages and returns results."""

    def __init__(self, cfg: RunConfig, run_dir: RunDir, task: Task, progress: bool = True):
        self.cfg, self.dir, self.task, self.progress = cfg, run_dir, task, progress
        self.recipe = RECIPES[cfg.method.name]
        self.state_path = run_dir.root / "state.json"
        self.original = task.pool.counts()
        self.by_id = {ex.id: ex for ex in task.pool}
        self.head_tail = report_head_tail(self.original)

    # -- pieces -----------------------------------------------------------------------------
    def _pool(self, state: State) -> dict[str, list[DomainExample]]:
        groups: dict[str, list[DomainExample]] = {d: [] for d in self.original}
        for i in state.pool:
            ex = self.by_id[i]
            groups[ex.domain].append(ex)
        return groups

    def _student_dir(self, stage: int) -> Path:
        return self.dir.root / "students" / f"stage-{stage}"

    def _scores(self, stage: int, plan: StagePlan, pool: dict[str, list[DomainExample]]):
        """Student uncertainty for candidate head inputs (None: select at random)."""
        if self.recipe.selection != "score" or stage == 1 or self.cfg.method.selection == "random":
            return None
        from domdistill.methods.students import load_trained_student
        from domdistill.selection.scoring import score_examples

        domains = list(pool) if self.recipe.pool_wide else plan.head
        cap = self.cfg.method.score_candidates
        rng = random.Random(f"{self.cfg.training.seed}:candidates:{stage}")
        candidates = []
        for d in domains:
            n = len(pool[d]) if cap is None else max(cap, plan.quotas.get(d, 0))
            candidates += pool[d] if len(pool[d]) <= n else rng.sample(pool[d], n)
        model, tok = load_trained_student(self._student_dir(stage - 1), for_generation=True)
        say(f"stage {stage}: the student writes and scores its own rationale for "
            f"{len(candidates)} head candidates ({self.cfg.method.selection})")
        with dist.sharded():
            values = score_examples(model, tok, candidates, self.task.template,
                                    method=self.cfg.method.selection,
                                    max_new_tokens=self.cfg.method.score_max_new_tokens,
                                    batch_size=self.cfg.evaluation.batch_size,
                                    progress=self.progress)
        if len(values) > 1 and len(set(values)) == 1:
            say(f"stage {stage}: every candidate scored the same ({values[0]:.3g}; e.g. the student "
                "wrote nothing): the uncertainty scores do not tell them apart, so inputs are "
                "taken in id order")
        return {ex.id: s for ex, s in zip(candidates, values)}

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from domdistill.evaluation.tracking import Tracker
        from domdistill.methods.annotate import Annotator
        from domdistill.methods.students import student_tokenizer

        start = time.time()
        state = dist.on_main(lambda: State.load(self.state_path)) or State(
            pool=[ex.id for ex in self.task.pool])
        earlier = state.elapsed
        budgets = plan_budgets(self.recipe, self.cfg) if self.recipe.train else []
        main = dist.is_main()
        if dist.launched():  # a tiny preset is built into the run folder once, by the main process
            def build_base_student() -> None:
                student_tokenizer(self.cfg, self.dir, self.task)

            dist.on_main(build_base_student)
        tracker = Tracker.from_config(self.cfg, self.dir.root) if main else Tracker(self.dir.root, [])
        annotator = (Annotator(self.cfg, self.dir, self.task)
                     if main and budgets and self.recipe.rationale else None)
        try:
            for stage, budget in enumerate(budgets, start=1):
                if stage > state.stage:
                    self._run_stage(stage, budget, len(budgets), state, annotator)
                    state.elapsed = earlier + time.time() - start
                    if annotator is not None:  # lets a resume notice a replaced ledger
                        from domdistill.teachers.ledger import ledger_identity

                        state.ledger = ledger_identity(self.dir.ledger)
                    if main:
                        state.save(self.state_path)
                        tracker.log_stage(stage, state.stages[-1])
        finally:
            tracker.close()
            if annotator is not None:
                annotator.close()
        metrics, phases = self._final_metrics(state)
        return dist.on_main(lambda: self._results(state, metrics, phases,
                                                  earlier + time.time() - start))

    def _run_stage(self, stage: int, budget: int, n_stages: int, state: State, annotator) -> None:
        """Select, annotate, retrain, evaluate; records everything in ``state``."""
        from domdistill.evaluation.metrics import cap_per_domain
        from domdistill.methods.students import evaluate_student, train_student

        clock = {"start": time.time()}
        rng = random.Random(f"{self.cfg.training.seed}:stage:{stage}")
        pool = self._pool(state)
        plan = stage_plan(self.recipe, self.cfg, stage, n_stages, budget, pool, self.original)
        say(f"stage {stage}/{n_stages}: {budget} teacher calls planned, {len(plan.head)} head and "
            f"{len(plan.tail)} tail domains")
        scores = self._scores(stage, plan, pool)
        if scores is not None:  # only scored candidates compete
            pool = {d: [ex for ex in exs if ex.id in scores] if d in plan.head or self.recipe.pool_wide
                    else exs for d, exs in pool.items()}
        clock["score"] = time.time()

        def decide():  # the main process selects and calls the teacher; the others receive it
            chosen = select_head(plan, pool, self.recipe, scores, rng)
            real = [ex for d in chosen for ex in chosen[d]]
            if annotator is not None:
                say(f"stage {stage}/{n_stages}: the teacher annotates {len(real)} chosen inputs"
                    + (" and synthesizes the tail's shortfall" if self.recipe.tail == "synthesize"
                       else ""))
            batch, spend = self._annotate(annotator, stage, plan, chosen, real, rng, state)
            return chosen, batch, spend, state.synthesized

        chosen, batch, spend, state.synthesized = dist.on_main(decide)
        real = [ex for d in chosen for ex in chosen[d]]
        clock["teacher"] = time.time()
        if spend.get("failed"):
            say(f"stage {stage}/{n_stages}: {spend['failed']} teacher request(s) failed; the stage "
                f"trains without them (`domdistill ledger {self.dir.root}` says why, and what "
                "was charged)")
        dropped = sum(spend.get("dropped_by_filter", {}).values())
        if dropped:
            say(f"stage {stage}/{n_stages}: {dropped} teacher answer(s) dropped by the answer filter "
                "(the teacher's answer is not the gold label; method.answer_filter)")
        taken = {ex.id for ex in real}
        state.pool = [i for i in state.pool if i not in taken]
        state.train.extend(ex.to_dict() for ex in batch)
        train_set = [DomainExample.from_dict(d) for d in state.train]
        if not train_set and self.recipe.train:
            raise TeacherError(
                f"stage {stage}: no training examples: {spend.get('failed', 0)} teacher calls failed "
                f"and {sum(spend.get('dropped_by_filter', {}).values())} answers were dropped by the "
                f"answer filter; see `domdistill ledger {self.dir.root}` for the errors, then rerun "
                "with --resume")
        new = [DomainExample.from_dict(d) for d in state.train[len(state.train) - len(batch):]]
        student_dir = self._student_dir(stage)
        say(f"stage {stage}/{n_stages}: training the student on {len(train_set)} examples")
        losses = train_student(self.cfg, self.dir, self.task, train_set, stage, student_dir,
                               with_rationale=self.recipe.rationale, new_examples=new,
                               progress=self.progress)
        clock["train"] = time.time()
        cap = self.cfg.evaluation.max_per_domain
        say(f"stage {stage}/{n_stages}: evaluating on "
            f"{len(cap_per_domain(self.task.test, cap))} test examples"
            + (f" (at most {cap} per domain)" if cap else ""))
        metrics = evaluate_student(self.cfg, self.task, student_dir, self.head_tail,
                                   progress=self.progress, predictions_path=self.dir.predictions)
        clock["eval"] = time.time()
        steps = ["start", "score", "teacher", "train", "eval"]
        seconds = {k: round(clock[k] - clock[p], 2) for p, k in zip(steps, steps[1:])}
        state.stages.append({"plan": plan.to_dict(), "selected": {d: [ex.id for ex in v]
                             for d, v in chosen.items()}, "examples": len(batch),
                             "train_size": len(train_set), "spend": spend, "training": losses,
                             "metrics": metrics, "seconds": seconds})
        state.stage = stage

    def _annotate(self, annotator, stage: int, plan: StagePlan, chosen, real, rng, state: State):
        """Teacher rationales for chosen real inputs, plus the tail's synthetic/duplicated examples."""
        if annotator is None:  # gold labels only: no teacher, no reference rationale either
            return [replace(ex, rationale=None) for ex in real], {"real": len(real), "examples": len(real)}
        return annotator.annotate_stage(stage, plan, chosen, real, self.recipe.tail, rng,
                                        state.synthesized)

    def _final_metrics(self, state: State) -> tuple[dict[str, Any], dict[str, float]]:
        """The last stage's metrics (zero-shot: the untrained student's, measured now) and the
        seconds per phase over all stages."""
        from domdistill.methods.students import evaluate_student

        phases = {k: round(sum(s.get("seconds", {}).get(k, 0.0) for s in state.stages), 2)
                  for k in PHASES}
        if state.stages:
            return state.stages[-1]["metrics"], phases
        say(f"evaluating the untrained student on {len(self.task.test)} test examples")
        start = time.time()
        metrics = evaluate_student(self.cfg, self.task, None, self.head_tail,
                                   progress=self.progress, predictions_path=self.dir.predictions)
        phases["eval"] = round(time.time() - start, 2)
        return metrics, phases

    def _results(self, state: State, metrics: dict[str, Any], phases: dict[str, float],
                 wall_seconds: float) -> dict[str, Any]:
        from domdistill.evaluation.results import teacher_warnings, write_results

        budget = None
        if self.recipe.rationale and self.recipe.train:
            from domdistill.methods.annotate import ledger_spend

            budget = {"limit": self.cfg.method.budget, **ledger_spend(self.dir)}
            budget["missing_logprobs"] = sum(s["spend"].get("missing_logprobs", 0) for s in state.stages)
        history = [{"stage": i + 1, "quotas": s["plan"]["quotas"], "head": s["plan"]["head"],
                    "tail": s["plan"]["tail"], "examples": s["examples"],
                    "train_size": s["train_size"], "spend": s["spend"], "macro": s["metrics"]["macro"],
                    "micro": s["metrics"]["micro"], "head_metrics": s["metrics"]["head"],
                    "tail_metrics": s["metrics"]["tail"], "loss": s["training"],
                    "seconds": s.get("seconds", {})}
                   for i, s in enumerate(state.stages)]
        return write_results(self.dir.results, self.cfg.method.name, metrics,
                             wall_seconds=wall_seconds, phase_seconds=phases, budget=budget,
                             history=history,
                             warnings=teacher_warnings(budget, self.cfg.teacher.top_logprobs)
                             + metrics.get("warnings", []),
                             dataset={"name": self.task.name, "pool": len(self.task.pool),
                                      "test": len(self.task.test), "domains": len(self.original),
                                      "domain_counts": self.original,
                                      "duplicates_dropped": self.task.duplicates_dropped},
                             student={"model": self.cfg.student.model, "lora": self.cfg.student.lora},
                             teacher={"kind": self.cfg.teacher.kind, "model": self.cfg.teacher.model},
                             answer_filter=self.cfg.method.answer_filter,
                             head_domains=self.head_tail[0], tail_domains=self.head_tail[1],
                             head_tail_rule=f"{HEAD_TAIL_RULE} of the training pool")
