"""CLI commands of the training stage: train, export, retrain.

torch and timm are imported inside the commands, so `scrapvision serve` and `--help` never
load them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

ConfigPath = Annotated[Path | None, typer.Option("--config", help="training/<name>.yaml")]
SetOption = Annotated[list[str] | None, typer.Option(
    "--set", help="Override a config value: section.key=value (value in YAML), repeatable.")]
ModelsDir = Annotated[Path, typer.Option("--models-dir", help="Model registry folder.")]
Progress = Annotated[bool, typer.Option(help="Show progress bars.")]


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main `scrapvision` app."""
    app.command("train")(train_command)
    app.command("export")(export_command)
    app.command("retrain")(retrain_command)


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Bad config, data or run folder: one line on stderr and exit status 2, no traceback."""
    try:
        yield
    except (ValueError, RuntimeError, LookupError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def train_command(
    config: ConfigPath = None,
    overrides: SetOption = None,
    resume: Annotated[Path | None, typer.Option(
        help="Run folder to continue from its last.pt (its own config and split).")] = None,
    progress: Progress = True,
) -> None:
    """Fine-tune a backbone on labelled images; writes a run folder under runs/."""
    from scrapvision.training.config import load_config
    from scrapvision.training.trainer import load_run_config, train

    if (config is None) == (resume is None):
        raise typer.BadParameter("give exactly one of --config or --resume")
    with _clear_errors():
        settings = (load_run_config(resume, overrides or []) if resume
                    else load_config(config, overrides or []))
        run_dir = train(settings, resume, progress=progress)
    typer.echo(f"run folder: {run_dir}")


def export_command(
    run: Annotated[Path, typer.Argument(help="Run folder written by `scrapvision train`.")],
    name: Annotated[str | None, typer.Option(help="Model name (default: the run's).")] = None,
    models_dir: ModelsDir = Path("models"),
) -> None:
    """Export a run's best model to ONNX, check parity with PyTorch, register a new version."""
    from scrapvision.training.export import export_run

    with _clear_errors():
        result = export_run(run, name=name, models_dir=models_dir)
    state = "active (first version)" if result.promoted else "not active until promoted"
    typer.echo(f"{result.name}:{result.version} -> {result.path} ({state}); ONNX vs PyTorch "
               f"max |diff| {result.max_abs_diff:.1e}")


def retrain_command(
    config: Annotated[Path, typer.Option("--config", help="training/<name>.yaml")],
    overrides: SetOption = None,
    promote: Annotated[bool, typer.Option(
        help="Make the new version active if it beats the active one on the test rows.")] = False,
    models_dir: ModelsDir = Path("models"),
    progress: Progress = True,
) -> None:
    """Train, export, evaluate, compare with the active version; promote if better (--promote)."""
    from scrapvision.training.config import load_config
    from scrapvision.training.retrain import retrain

    with _clear_errors():
        result = retrain(load_config(config, overrides or []), models_dir=models_dir,
                         promote=promote, progress=progress)
    ref = f"{result.export.name}:{result.export.version}"
    metrics = result.card["metrics"]
    typer.echo(f"{ref}: test top-1 {metrics['top1']:.2%}, macro F1 {metrics['macro_f1']:.3f} "
               f"(run {result.run_dir}, card next to {result.export.path})")
    if result.comparison is not None:
        typer.echo(result.comparison["verdict"])
    if not result.comparable:
        typer.echo(f"not comparable with {result.previous} (classes differ): not promoted")
    if result.promoted:
        typer.echo(f"{ref} is now active")
    elif result.previous is not None:
        # --promote only promotes a comparable winner: other classes are a person's call
        asked = promote and result.comparable
        hint = "" if asked else (f"; promote with `scrapvision models promote "
                                 f"{result.export.name} {result.export.version}`")
        typer.echo(f"{result.previous} stays active{hint}")
