"""`scrapvision` command line: one entry point, each stage registers its own commands.

Stage modules import their heavy dependencies (torch, the web stack) inside the commands,
so `scrapvision serve` never imports torch and `--help` stays fast.
"""

from __future__ import annotations

import typer

from scrapvision import models_cli
from scrapvision.audit import commands as audit_commands
from scrapvision.service import commands as service_commands
from scrapvision.training import commands as training_commands

app = typer.Typer(
    name="scrapvision",
    help="Scrap-sorting vision: train, export and evaluate models; serve sort decisions.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
training_commands.register(app)
service_commands.register(app)
audit_commands.register(app)
models_cli.register(app)
