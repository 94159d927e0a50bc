"""``domdistill data ...``: inspect domain-labelled data."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from domdistill.cli import app

data_app = typer.Typer(help="Inspect domain-labelled data (counts, imbalance, head/tail).",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("stats")
def stats(
    path: str = typer.Argument(..., help="Data file or folder, 'builtin', or a run config (YAML): "
                                         "its training pool as the run sees it (field map, "
                                         "test split and resampling applied)"),
    format: str = typer.Option("auto", "--format", "-f",
                               help="auto, jsonl, csv, r52, math, recorded, hf or builtin"),
    split: str | None = typer.Option(None, "--split", help="Split inside the source (MATH: train/test)"),
    head_share: Optional[float] = typer.Option(
        None, "--head-share", min=0.0, max=1.0,
        help="Head = fewest largest domains holding this share (default: the rule runs and "
             "reports use, tail = domains smaller than the mean domain; 0: no split)"),
    json_output: bool = typer.Option(False, "--json", help="Print JSON instead of a table"),
) -> None:
    """Per-domain counts, shares, head/tail and imbalance of a dataset."""
    from domdistill.data.domains import HEAD_TAIL_RULE, domain_stats
    from domdistill.data.loaders import load_dataset

    if path.endswith((".yaml", ".yml")):
        from domdistill.config import load_config
        from domdistill.methods.task import task_for_run

        dataset = task_for_run(load_config(path)).pool
    else:
        dataset = load_dataset(path, format=format, split=split)
    st = domain_stats(dataset, head_share=head_share or None, mean_rule=head_share is None)
    rule = (HEAD_TAIL_RULE if head_share is None else
            f"head: the {len(st.head)} largest domains covering >= {head_share:.0%}" if head_share
            else "no head/tail split")
    if json_output:
        typer.echo(json.dumps({**st.to_dict(), "head_tail_rule": rule}, indent=2))
        return
    head = set(st.head)
    table = Table(title=f"{dataset.name}: {len(st.counts)} domains")
    table.add_column("domain")
    table.add_column("count", justify="right")
    table.add_column("share", justify="right")
    table.add_column("part")
    for name, share in st.shares().items():
        part = "head" if name in head else "tail" if st.tail else ""
        table.add_row(name, str(st.counts[name]), f"{share:.2%}", part)
    console = Console()
    console.print(table)
    console.print(f"domains {len(st.counts)}  total {st.total}  max {st.max}  min {st.min}  "
                  f"imbalance ratio {st.imbalance_ratio:.4g}  "
                  f"({len(st.head)} head, {len(st.tail)} tail; {rule})")
