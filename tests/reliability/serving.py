"""Start and kill a real `scrapvision serve` for the crash and overload tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from scrapvision.settings import CONFIG_ENV

STARTUP_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_serve(config: Path, base: str) -> subprocess.Popen:
    """`scrapvision serve --config` in its own process group, once every line is ready."""
    env = {key: value for key, value in os.environ.items() if key != CONFIG_ENV}
    server = subprocess.Popen([sys.executable, "-m", "scrapvision", "serve", "--config",
                               str(config)], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    give_up = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < give_up:
        if server.poll() is not None:
            pytest.fail(f"scrapvision serve exited with {server.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    kill_group(server)
    pytest.fail("scrapvision serve did not become ready")


def kill_group(server: subprocess.Popen) -> None:
    """SIGKILL to the master and every worker at once; nothing gets to clean up."""
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.wait()
