"""CLI commands of the service stage: `scrapvision serve`, `scrapvision hash-key`."""

from __future__ import annotations

import ipaddress
import logging
import logging.config
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

log = logging.getLogger("scrapvision.service")
APP_FACTORY = "scrapvision.service.app:app_from_environment"


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main `scrapvision` app."""
    app.command()(serve)
    app.command("hash-key")(hash_key)


def serve(
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", help="YAML settings file (see README 'Configuration')",
        exists=True, dir_okay=False)] = None,
    host: Annotated[Optional[str], typer.Option(help="bind address")] = None,
    port: Annotated[Optional[int], typer.Option(help="TCP port")] = None,
    workers: Annotated[Optional[int], typer.Option(help="worker processes")] = None,
) -> None:
    """Serve sort decisions over HTTP and WebSocket (FastAPI under uvicorn)."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE

    from scrapvision.service import reuseport
    from scrapvision.service.logs import log_config
    from scrapvision.service.metrics import MULTIPROC_ENV
    from scrapvision.settings import load_settings

    overrides = {k: v for k, v in {"host": host, "port": port, "workers": workers}.items()
                 if v is not None}
    for key, value in overrides.items():  # worker processes read settings from the env
        os.environ[f"SCRAPVISION_{key.upper()}"] = str(value)
    settings = load_settings(config)
    logging.config.dictConfig(log_config(settings.log_level))
    bind = settings.host
    if not settings.api_keys and not _is_loopback(bind):
        log.warning("no API keys configured: binding to 127.0.0.1 instead of %s", bind)
        bind = "127.0.0.1"
    try:  # a clear error before any worker loads a model
        listen_port = reuseport.check_free(bind, settings.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", bind, settings.port, exc.strerror)
        raise typer.Exit(STARTUP_FAILURE) from None
    metrics_dir = None
    if settings.workers > 1:
        metrics_dir = tempfile.mkdtemp(prefix="scrapvision-metrics-")
        os.environ[MULTIPROC_ENV] = metrics_dir
    options: dict[str, Any] = dict(
        factory=True, host=bind, port=listen_port, workers=settings.workers,
        log_config=log_config(settings.log_level), access_log=False,
        ws_max_size=settings.max_frame_bytes + 4096,
        # JPEG/PNG frames do not compress: with permessage-deflate, which stock clients such as
        # `websockets` offer, the server spent 281-308 us of CPU per frame instead of 127-131
        ws_per_message_deflate=False,
    )
    try:
        if settings.workers > 1 and reuseport.balances():
            reuseport.run(uvicorn.Config(APP_FACTORY, **options))
        else:  # one worker, or one listening socket shared by all (see `reuseport.balances`)
            uvicorn.run(APP_FACTORY, **options)
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def hash_key(key: Annotated[str, typer.Argument(help="the API key to hash")]) -> None:
    """Print the SHA-256 digest of an API key, for the `api_keys` setting."""
    from scrapvision.service.auth import hash_key as digest

    typer.echo(digest(key))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
