"""`scrapvision audit ...`: bad settings and unusable databases are one clear line."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scrapvision.cli import app
from scrapvision.settings import CONFIG_ENV


def _closed_port() -> int:
    with socket.socket() as probe:  # bound, never listening: connections are refused
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("command", [["migrate"], ["prune"],
                                     ["export-dataset", "--out", "{tmp}/export"]])
@pytest.mark.parametrize(("url", "message"), [
    ("bogus", "Could not parse SQLAlchemy URL"),
    ("postgresql+psycopg://nobody@127.0.0.1:{port}/audit", "Connection refused"),
])
def test_an_unusable_database_is_one_clear_line(command: list[str], url: str, message: str,
                                                tmp_path: Path) -> None:
    port = _closed_port()
    arguments = ["audit", *[a.format(tmp=tmp_path) for a in command],
                 "--url", url.format(port=port)]
    if command[0] != "migrate":
        arguments += ["--frames-dir", str(tmp_path / "frames")]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 2, result.output
    assert "error: cannot use the audit database" in result.output
    assert message in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_settings_with_a_typo_are_one_clear_line(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text("audit: {max_age_day: 30}\n")
    monkeypatch.setenv(CONFIG_ENV, str(config))  # load_settings sets it: unset afterwards
    result = CliRunner().invoke(app, ["audit", "prune", "-c", str(config)])
    assert result.exit_code == 2, result.output
    assert "settings are not valid" in result.output and "max_age_day" in result.output
