"""CLI of the service stage."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from pythonjsonlogger.json import JsonFormatter
from typer.testing import CliRunner

from scrapvision.cli import app
from scrapvision.service.auth import hash_key
from scrapvision.service.commands import _is_loopback
from scrapvision.service.logs import log_config


def test_hash_key_prints_the_digest_for_the_config() -> None:
    result = CliRunner().invoke(app, ["hash-key", "s3cret"])
    assert result.exit_code == 0
    assert result.output.strip() == hash_key("s3cret")


def test_only_loopback_addresses_count_as_local() -> None:
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("10.0.0.5")


def test_log_records_become_json_objects() -> None:
    options = dict(log_config("info")["formatters"]["json"])
    formatter = JsonFormatter(**{k: v for k, v in options.items() if k != "()"})

    def formatted(name: str, message: str, **extra: str) -> dict:
        record = logging.makeLogRecord({"name": name, "msg": message, "levelname": "INFO",
                                        **extra})
        return json.loads(formatter.format(record))

    uvicorn_row = formatted("uvicorn.error", "hello", color_message="\x1b[1mhello")
    assert uvicorn_row["message"] == "hello" and "color_message" not in uvicorn_row
    service_row = formatted("scrapvision.service", "model", version="v2")
    assert service_row["version"] == "v2" and service_row["level"] == "INFO"
    assert options["()"] == "pythonjsonlogger.json.JsonFormatter"


def test_serving_path_never_imports_torch() -> None:
    code = ("import sys, scrapvision.cli, scrapvision.service.app, scrapvision.service.commands;"
            "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
