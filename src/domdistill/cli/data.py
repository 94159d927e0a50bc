"""``domdistill data ...``: inspect domain-labelled data."""

from __future__ import annotations

import typer

from domdistill.cli import app

data_app = typer.Typer(help="Inspect domain-labelled data (counts, imbalance, head/tail).",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")
