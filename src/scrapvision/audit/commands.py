"""CLI commands of the audit stage: `scrapvision audit export-dataset | prune | migrate`.

They read the same settings as `scrapvision serve` (`--config` file + environment), so
they find the service's database and frames without being told twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from scrapvision.audit.settings import AuditSettings

audit_app = typer.Typer(help="QA audit store: export reviewed frames for retraining, retention, "
                             "schema migration.",
                        no_args_is_help=True)

Config = Annotated[Optional[Path], typer.Option(
    "--config", "-c", help="service YAML settings file (its `audit:` section is used)",
    exists=True, dir_okay=False)]
Url = Annotated[Optional[str], typer.Option(
    "--url", help="database URL, overriding the settings (e.g. sqlite:///data/audit.db)")]
FramesDir = Annotated[Optional[Path], typer.Option(
    "--frames-dir", help="review frames folder, overriding the settings")]


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main `scrapvision` app."""
    app.add_typer(audit_app, name="audit")


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Bad settings or an unusable database: one line on stderr and exit status 2."""
    from pydantic import ValidationError
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except ValidationError as exc:
        typer.echo(f"error: the settings are not valid: {exc}", err=True)
        raise typer.Exit(2) from exc
    except SQLAlchemyError as exc:
        reason = str(exc.orig if getattr(exc, "orig", None) is not None else exc)
        typer.echo(f"error: cannot use the audit database: {reason.splitlines()[0]}", err=True)
        raise typer.Exit(2) from exc


def _settings(config: Path | None, url: str | None, frames_dir: Path | None) -> AuditSettings:
    from scrapvision.settings import load_settings

    settings = load_settings(config).audit
    overrides = {key: value for key, value in {"url": url, "frames_dir": frames_dir}.items()
                 if value is not None}
    return settings.model_copy(update=overrides)


@audit_app.command("export-dataset")
def export_dataset(
    out: Annotated[Path, typer.Option("--out", "-o", help="folder to write the data set to",
                                      file_okay=False)],
    merge_with: Annotated[Optional[Path], typer.Option(
        "--merge-with", help="existing ImageFolder root whose images are merged in",
        exists=True, file_okay=False)] = None,
    line: Annotated[Optional[str], typer.Option(help="only this line's decisions")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an earlier export in --out")] = False,
    config: Config = None,
    url: Url = None,
    frames_dir: FramesDir = None,
) -> None:
    """Write reviewed frames as an ImageFolder data set (<label>/<hash>.jpg + manifest.jsonl).

    The label is the reviewer's (the corrected class when relabelled). Train on it with
    `scrapvision train`, alone or next to the original data set's root.
    """
    from scrapvision.audit.db import make_engine, migrate
    from scrapvision.audit.export import ExportError
    from scrapvision.audit.export import export_dataset as export
    from scrapvision.audit.frames import FrameStore

    with _clear_errors():
        settings = _settings(config, url, frames_dir)
        engine = make_engine(settings.url)
        try:
            migrate(engine)
            result = export(engine, FrameStore(settings.frames_dir), out,
                            merge_with=merge_with, line=line, overwrite=overwrite)
        except ExportError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from error
        finally:
            engine.dispose()
    typer.echo(f"{result.images} reviewed frames and {result.merged} merged images -> {out}")
    for label, count in result.per_label.items():
        typer.echo(f"  {label}: {count}")
    skipped = {"conflicting labels": result.conflicting, "frame missing": result.missing,
               "label not a folder name": result.unsafe_labels}
    for reason, count in skipped.items():
        if count:
            typer.echo(f"  skipped ({reason}): {count}", err=True)


@audit_app.command("prune")
def prune(config: Config = None, url: Url = None, frames_dir: FramesDir = None) -> None:
    """Apply the retention settings now: old unreviewed decisions, orphan frames, old tallies."""
    from scrapvision.audit.store import AuditStore

    with _clear_errors():
        store = AuditStore(_settings(config, url, frames_dir)).start()
        try:
            result = store.prune()
        finally:
            store.close()
    typer.echo(f"pruned {result.decisions} decisions, {result.frames} frames, "
               f"{result.rollups} tally minutes")


@audit_app.command("migrate")
def migrate_schema(config: Config = None, url: Url = None) -> None:
    """Bring the audit database schema to the newest revision (the service does it at start)."""
    from scrapvision.audit.db import make_engine, migrate

    with _clear_errors():
        engine = make_engine(_settings(config, url, None).url)
        try:
            migrate(engine)
        finally:
            engine.dispose()
    typer.echo("audit schema is at the newest revision")
