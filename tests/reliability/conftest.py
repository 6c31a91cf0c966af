"""Reliability fixtures: the real app with keys of every role, and a tally of how many
generated cases each fuzz test ran.

The counts are printed at the end of the run ("reliability cases: ..."): the README's
Reliability figures quote them, so they must come from the run, not from settings.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from glob import glob
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from scrapvision.audit.settings import AuditSettings
from scrapvision.service.app import create_app
from scrapvision.service.auth import hash_key
from scrapvision.settings import CONFIG_ENV, ApiKey, LineSettings, Settings

from .postgres import PrivatePostgres

SLOW = os.environ.get("SCRAPVISION_SLOW") == "1"
WAIT_S = 60.0  # generous: a loaded CI box must not fail a test that only waits
KEYS = {"frames": "frames-secret", "qa": "qa-secret", "admin": "admin-secret"}
CASES: Counter[str] = Counter()


def examples(fast: int, slow: int) -> int:
    """`max_examples` for a fuzz test: quick by default, many more with SCRAPVISION_SLOW=1."""
    return slow if SLOW else fast


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    """Poll until `condition()` is truthy; fail after WAIT_S saying what never happened."""
    give_up = time.monotonic() + WAIT_S
    while not (result := condition()):
        if time.monotonic() > give_up:
            pytest.fail(f"gave up waiting for: {what}")
        time.sleep(0.05)
    return result


@pytest.fixture
def count_case(request: pytest.FixtureRequest) -> Callable[[str | None], None]:
    """Call once per generated case, optionally with its outcome; tallied under the test's name."""
    name = request.node.originalname

    def count(outcome: str | None = None) -> None:
        CASES[name] += 1
        if outcome:
            CASES[f"{name} / {outcome}"] += 1

    return count


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if CASES:
        terminalreporter.write_sep("-", "reliability cases")
        for name, number in sorted(CASES.items()):
            terminalreporter.write_line(f"{name}: {number} cases")


@pytest.fixture(autouse=True)
def _no_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests build their settings explicitly; a developer's config must not leak in."""
    monkeypatch.delenv(CONFIG_ENV, raising=False)


@pytest.fixture
def make_settings(models_dir: Path, tmp_path: Path) -> Callable[..., Settings]:
    """Service settings on the tiny model with a private SQLite audit store (real store).

    The line's deadline is long so a busy test machine never turns decisions 'late'.
    """

    def make(keys: bool = False, audit: dict[str, Any] | None = None,
             **overrides: Any) -> Settings:
        audit_settings = AuditSettings(**{"url": f"sqlite:///{tmp_path / 'audit.db'}",
                                          "frames_dir": tmp_path / "frames",
                                          "commit_interval_ms": 20, **(audit or {})})
        values: dict[str, Any] = {
            "models_dir": models_dir, "audit": audit_settings, "model_poll_s": 0.05,
            "lines": {"tiny": LineSettings(model="tiny", deadline_ms=60_000)},
            "api_keys": [ApiKey(name=role, role=role, sha256=hash_key(key))
                         for role, key in KEYS.items()] if keys else [],
            **overrides,
        }
        return Settings(**values)

    return make


@pytest.fixture
def make_client(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    """The real app (lifespan, audit store) as a TestClient; closed after the test."""
    with ExitStack() as started:
        yield lambda **settings: started.enter_context(
            TestClient(create_app(make_settings(**settings))))


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A throw-away PostgreSQL cluster, started; removed after the test."""
    found = sorted(glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("no PostgreSQL server binaries (initdb) under /usr/lib/postgresql/*/bin")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: initdb refuses to run as root")
    server = PrivatePostgres(Path(found[-1]).parent)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.remove()
