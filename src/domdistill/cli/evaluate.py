"""``domdistill eval``: score any saved student per domain and write ``results.json``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from domdistill.cli import app
from domdistill.config import EvaluationConfig
from domdistill.errors import InputError

console = Console()


def print_metrics(metrics: dict, title: str = "per-domain metrics") -> None:
    """A rich table: one row per domain, then macro / micro / head / tail."""
    from domdistill.evaluation.metrics import OUTPUT_SHAPE  # numpy and scikit-learn: not for --help

    names = [k for k in next(iter(metrics["per_domain"].values()))
             if k != "n" and k not in OUTPUT_SHAPE]
    table = Table(title=title)
    table.add_column("domain")
    table.add_column("n", justify="right")
    for m in names:
        table.add_column(m, justify="right")
    table.add_column("no answer", justify="right")
    table.add_column("most frequent answer")
    for d, block in metrics["per_domain"].items():
        table.add_row(d, str(block["n"]), *(f"{block[m]:.4g}" for m in names), *_shape(block))
    for agg in ("macro", "micro", "head", "tail"):
        block = metrics.get(agg, {})
        table.add_row(f"[bold]{agg}[/]", str(block.get("n", metrics["n"] if agg in ("macro", "micro") else "")),
                      *(f"{block[m]:.4g}" if m in block else "-" for m in names),
                      *(_shape(metrics) if agg == "micro" else ("", "")))
    console.print(table)


def _shape(block: dict) -> tuple[str, str]:
    """The 'no answer' and 'most frequent answer' cells of a block with output-shape keys."""
    if "no_answer" not in block:
        return "-", "-"
    return (f"{block['no_answer']:.0%}",
            f"{block['top_prediction']} ({block['top_prediction_share']:.0%})")


def _lines(path: Path) -> list[str]:
    """The non-empty lines of a labels file (a clear error when it cannot be read)."""
    try:
        found = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read the labels file ({getattr(err, 'strerror', None) or err})",
                         path=path, field="--labels-file") from None
    found = [label for label in found if label]
    if not found:
        raise InputError("the labels file has no labels", path=path, field="--labels-file")
    return found


def _csv(value: str | None) -> list[str] | None:
    return [x.strip() for x in value.split(",") if x.strip()] if value else None


@app.command("eval")
def eval_command(
    model: Path = typer.Option(..., "--model", help="Saved student folder (save_pretrained output)"),
    data: str = typer.Option(..., "--data", help="Test data file/folder, or 'builtin'"),
    format: str = typer.Option("auto", "--format", help="Data format (auto, jsonl, csv, r52, math, recorded, hf)"),
    task: str = typer.Option("builtin", "--task", help="classification, multiple_choice, math, qa or builtin"),
    split: Optional[str] = typer.Option(None, "--split", help="Split inside the source (MATH: test)"),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated label set (classification)"),
    labels_file: Optional[Path] = typer.Option(
        None, "--labels-file", help="The label set, one label per line (for labels with commas)"),
    head: Optional[str] = typer.Option(None, "--head", help="Comma-separated head domains"),
    tail: Optional[str] = typer.Option(None, "--tail", help="Comma-separated tail domains "
                                       "(default: test domains smaller than the mean test domain)"),
    out: Path = typer.Option(Path("results.json"), "--out", help="Where to write results.json"),
    predictions: Optional[Path] = typer.Option(None, "--predictions", help="Also write per-example JSONL"),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    max_per_domain: Optional[int] = typer.Option(None, "--max-per-domain", min=1),
    per_domain: int = typer.Option(20, "--builtin-per-domain", min=1, help="Built-in test examples per domain"),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap resamples (0: none)"),
    no_perplexity: bool = typer.Option(False, "--no-perplexity", help="Skip gold-completion perplexity"),
    dtype: str = typer.Option("auto", "--dtype"),
    seed: int = typer.Option(0, "--seed"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Evaluate a saved student on a test set: per-domain, macro, micro, head and tail metrics."""
    from domdistill.data.domains import HEAD_TAIL_RULE
    from domdistill.data.templates import INSTRUCTIONS, StudentTemplate
    from domdistill.evaluation.metrics import evaluate_model
    from domdistill.evaluation.results import write_results
    from domdistill.models.loading import load_model_and_tokenizer

    if task not in INSTRUCTIONS:
        raise InputError(f"unknown task {task!r} (expected one of {', '.join(INSTRUCTIONS)})", field="--task")
    from domdistill.io import check_writable

    check_writable(out, "results")
    if predictions is not None:
        check_writable(predictions, "predictions")
    start = time.perf_counter()
    if data == "builtin":
        from domdistill.data.builtin import builtin_test_set

        dataset = builtin_test_set(per_domain, seed=seed)
    else:
        from domdistill.data.loaders import load_dataset

        dataset = load_dataset(data, format=format, split=split)
    if len(dataset) == 0:
        raise InputError("no examples in the test data", path=data)
    if labels is not None and labels_file is not None:
        raise InputError("give the label set once: --labels or --labels-file", field="--labels")
    label_set = _csv(labels) if labels_file is None else _lines(labels_file)
    if task == "classification" and label_set is None:
        label_set = sorted({ex.answer for ex in dataset})
    elif task == "classification":
        missing = sorted({ex.answer for ex in dataset} - set(label_set))
        if missing:
            raise InputError(f"{len(missing)} label(s) of the test data are not in the label set: "
                             f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}; "
                             "add them (or leave --labels out to use the data's labels)",
                             path=data, field="--labels")
    student, tokenizer = load_model_and_tokenizer(model, dtype=dtype, for_generation=True)
    cfg = EvaluationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size, bootstrap=bootstrap,
                           perplexity=not no_perplexity, max_per_domain=max_per_domain, seed=seed)
    positions = getattr(student.config, "max_position_embeddings", None)
    template = StudentTemplate.for_task(  # long inputs are cut so prompt + answer fit the model
        task, label_set, max_prompt_tokens=positions - max_new_tokens if positions else None)
    metrics = evaluate_model(student, tokenizer, dataset, task, template, cfg, labels=label_set, head=_csv(head), tail=_csv(tail), progress=progress,
                             predictions_path=predictions)
    write_results(out, "eval", metrics, wall_seconds=time.perf_counter() - start,
                  dataset={"path": data, "format": format, "task": task, "n": metrics["n"],
                           "counts": dataset.counts()},
                  student={"model": str(model)},
                  head_domains=metrics["head"]["domains"], tail_domains=metrics["tail"]["domains"],
                  head_tail_rule="given by --head/--tail" if head or tail
                  else f"{HEAD_TAIL_RULE} of the test set")
    print_metrics(metrics, title=f"{model} on {data}")
    console.print(f"wrote {out}")
