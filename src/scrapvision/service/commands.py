"""CLI commands of the service stage."""

import typer


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main `scrapvision` app."""
