"""CLI commands of the audit stage."""

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main `scrapvision` app."""
