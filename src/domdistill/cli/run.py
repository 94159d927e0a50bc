"""``domdistill run`` and ``domdistill demo``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from domdistill.cli import app
from domdistill.config import RunConfig, load_config, parse_overrides
from domdistill.evaluation.results import calls_summary
from domdistill.redact import redact

console = Console()


@app.command()
def run(
    config: Path = typer.Argument(..., help="Run configuration (YAML); see examples/ and docs/"),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: output.dir)"),
    set_: list[str] = typer.Option([], "--set", help="Override a key, e.g. --set method.budget=800"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and cost estimate; call no teacher"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder"),
    resume: bool = typer.Option(False, "--resume", help="Continue a crashed or stopped run"),
    as_json: bool = typer.Option(False, "--json", help="Print the plan or results as JSON"),
    probe: bool = typer.Option(False, "--probe", help="With --dry-run: load the student and time "
                               "one training step and two generation batches on this machine, "
                               "to estimate each stage's seconds"),
) -> None:
    """Run a method (BalDistill, DDK or a baseline) as the config says."""
    cfg = load_config(config, parse_overrides(set_))
    if probe and not dry_run:
        raise typer.BadParameter("--probe estimates a planned run; use it with --dry-run")
    if dry_run:
        show_plan(cfg, as_json, probe=probe)
        return
    from domdistill import distributed as dist
    from domdistill.methods import run_config

    try:
        results = run_config(cfg, out=out, overwrite=overwrite or None, resume=resume)
    finally:
        main = dist.is_main()
        dist.shut_down()
    if not main:  # under accelerate launch / torchrun the main process reports
        return
    folder = out or cfg.output.dir
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        print_results({cfg.method.name: results})
        console.print(f"run folder: {folder}")
    print_warnings(results, folder)


def print_warnings(results: dict[str, Any], folder: Any) -> None:
    """The run's warnings (failed or unusable teacher calls, unparsable or collapsed outputs)
    on stderr, after the results."""
    from domdistill.cli import err_console

    for w in results.get("warnings", []):
        hint = "" if "predictions.jsonl" in w else f"; see `domdistill ledger {folder}`"
        err_console.print("[bold yellow]warning:[/]", end=" ")
        err_console.print(f"{redact(w)}{hint}", highlight=False, markup=False, soft_wrap=True)


def show_plan(cfg: RunConfig, as_json: bool = False, probe: bool = False) -> None:
    """The dry-run: quotas per stage and domain, head/tail, expected calls, tokens and cost, and
    the student's work per stage (seconds too with ``probe``)."""
    from domdistill.methods import DDK_FAMILY
    from domdistill.methods.plan import plan_baldistill
    from domdistill.methods.task import task_for_run

    if cfg.method.name in DDK_FAMILY:
        raise typer.BadParameter(f"--dry-run plans teacher calls; {cfg.method.name} makes none")
    from domdistill.methods import check_models
    from domdistill.methods.baldistill import RECIPES
    from domdistill.methods.compute import estimate_student_compute
    from domdistill.methods.students import check_student_format, student_tokenizer
    from domdistill.teachers import check_teacher

    task = task_for_run(cfg)
    check_models(cfg)
    if RECIPES[cfg.method.name].rationale and RECIPES[cfg.method.name].train:
        check_teacher(cfg.teacher)  # the key variable, recorded files: as the run would
    plan = plan_baldistill(cfg, task)
    tokenizer = student_tokenizer(cfg, None, task)
    # refuses lengths that cannot hold the answer line; measures the training answers
    fit = check_student_format(cfg, task, tokenizer, training_answers=plan.answer_samples)
    if probe and not as_json:
        console.print("probe: loading the student and timing one training step and two "
                      "generation batches ...")
    estimate_student_compute(cfg, task, plan, tokenizer, probe=probe)
    if as_json:
        print(json.dumps({**plan.to_dict(), "prompts": fit}, indent=2))
        return
    table = Table(title=f"{plan.method}: quotas per stage (* = tail: shortfall synthesized)")
    table.add_column("domain")
    for s in plan.stages:
        table.add_column(f"stage {s.stage}", justify="right")
    for d in (plan.stages[0].quotas if plan.stages else {}):
        table.add_row(d, *[f"{s.quotas[d]}{'*' if d in s.tail else ''}" for s in plan.stages])
    table.add_row("[bold]total", *[f"[bold]{s.budget}" for s in plan.stages])
    console.print(table)
    console.print(f"expected teacher calls: [bold]{plan.calls}[/] (budget {cfg.method.budget}); "
                  f"synthetic examples: {plan.synthetic}")
    console.print(f"estimated tokens: {plan.prompt_tokens:,} prompt + {plan.completion_tokens:,} "
                  f"completion; estimated cost: {plan.cost:.2f} (prices from teacher.price_per_1k_*)")
    console.print(f"prompts: at most {fit['max_prompt_tokens']} tokens; {fit['cut']} of "
                  f"{fit['inputs']} inputs are longer and will lose their end")
    if "answers" in fit:
        a = fit["answers"]
        console.print(f"training answers ({a['measured']} measured): median {a['median_tokens']} "
                      f"tokens, 95th percentile {a['p95_tokens']}", soft_wrap=True)
        share = a["longer_than"]["evaluation.max_new_tokens"]
        if share > 0:
            console.print(f"[yellow]warning:[/] {share:.0%} of them are longer than "
                          f"evaluation.max_new_tokens ({cfg.evaluation.max_new_tokens}): a "
                          "student that learns to write like them is stopped before its answer "
                          "line; raise it", soft_wrap=True)
    show_compute(plan.compute, plan.probe)
    if plan.coverage is not None:
        show_recorded_shortfalls(plan.coverage, cfg.teacher.max_failure_rate)
    console.print("dry run: no teacher was called and nothing was written.")


def show_compute(rows: list[dict[str, Any]], probe: dict[str, float] | None) -> None:
    """The dry run's table of the student's work per stage (and seconds, when probed)."""
    table = Table(title="the student's work per stage: training examples and tokens, inputs "
                        "scored and evaluated" + ("; seconds from the probe" if probe else ""))
    names = {"stage": "stage", "train_examples": "examples", "train_tokens": "tokens",
             "scoring_generations": "scored", "evaluation_generations": "evaluated"}
    for name in names.values():
        table.add_column(name, justify="right", no_wrap=True)
    if probe:
        for name in ("train s", "score s", "eval s"):
            table.add_column(name, justify="right", no_wrap=True)
    for r in rows:
        cells = [f"{r[k]:,}" for k in names]
        if probe:
            cells += [f"{r['seconds'][k]:,.0f}" for k in ("train", "score", "evaluate")]
        table.add_row(*cells)
    console.print(table)
    if probe:
        total = sum(r["seconds"]["total"] for r in rows)
        about = f"{total / 60:.0f} min" if total >= 90 else f"{total:.0f} s"
        console.print(f"student compute on this machine: about {about} (generation priced at its "
                      "full length, an upper bound; teacher time not included)", soft_wrap=True)
    else:
        console.print("add --probe to time the student on this machine and estimate seconds")


def show_recorded_shortfalls(rows: list[dict[str, Any]], max_failure_rate: float) -> None:
    """The dry run's table of domains the recorded teacher cannot serve in full."""
    if not rows:
        console.print("recorded teacher: every planned request has a record")
        return
    table = Table(title="recorded teacher: domains it cannot serve in full")
    for name in ("domain", "pool", "with rationale", "rationale calls", "synthetic recorded",
                 "synthetic planned", "expected without record"):
        table.add_column(name, justify="left" if name == "domain" else "right")
    for r in rows:
        table.add_row(r["domain"], *(str(r[k]) for k in (
            "pool", "with_rationale", "rationale_calls", "synthetic_recorded",
            "synthetic_planned", "expected_without_record")))
    console.print(table)
    total = sum(r["expected_without_record"] for r in rows)
    console.print(f"about {total} request(s) will find no record: they fail and are not charged; "
                  f"a stage where more than {max_failure_rate:.0%} of the requests fail stops the "
                  "run (exit 2, resumable), otherwise it finishes with fewer examples and a "
                  "warning. Add records, or lower method.budget.", soft_wrap=True)


def print_results(runs: dict[str, dict[str, Any]]) -> None:
    """Per-domain table, one column per method, head and tail marked, aggregates below."""
    first = next(iter(runs.values()))
    metric = "accuracy" if "accuracy" in first["metrics"]["macro"] else next(iter(first["metrics"]["macro"]))
    head = set(first.get("head_domains", []))
    ratio = metric == "perplexity" and "ppl_ratio" in first["metrics"]["macro"]

    def cell(block: dict[str, Any]) -> str:  # perplexity runs show the student/teacher ratio too
        text = f"{block.get(metric, float('nan')):.3f}"
        return f"{text} ({block['ppl_ratio']:.2f}x)" if ratio and "ppl_ratio" in block else text

    table = Table(title=f"per-domain {metric}" + (" (student/teacher ratio)" if ratio else ""),
                  caption=first.get("head_tail_rule"))
    table.add_column("domain")
    table.add_column("pool", justify="right")
    table.add_column("test n", justify="right")
    table.add_column("split")
    for name in runs:
        table.add_column(name, justify="right")
    per = first["metrics"]["per_domain"]
    counts = first.get("dataset", {}).get("domain_counts", {})
    for d in sorted(per, key=lambda d: (-counts.get(d, 0), d)):
        kind = "head" if d in head else "tail"
        table.add_row(d, str(counts.get(d, "")), str(per[d].get("n", "")), kind,
                      *[cell(r["metrics"]["per_domain"].get(d, {})) for r in runs.values()])
    for block in ("macro", "micro", "head", "tail"):
        table.add_row(f"[bold]{block}", "", "", "",
                      *[f"[bold]{cell(r['metrics'][block])}" for r in runs.values()])
    table.add_row("teacher calls", "", "", "", *[calls_summary(r.get("budget")) for r in runs.values()])
    console.print(table)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder for the demo's run folders"),
    method: str = typer.Option("baldistill", "--method", help="baldistill or ddk"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace earlier demo runs"),
) -> None:
    """BalDistill A vs Random FT CoT (or DDK vs KD) on the built-in long-tailed task, CPU-sized."""
    from domdistill.methods.demo import run_demo

    if method == "baldistill":
        console.print("BalDistill A against Random FT CoT at the same teacher budget, on the built-in "
                      "long-tailed task (14 skills, program teacher, tiny CPU student).")
    runs = run_demo(out, method=method, overwrite=overwrite, log=console.print)
    print_results(runs)
    console.print(f"run folders and report: {out}")
