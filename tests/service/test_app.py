"""The app factory's lifespan: what a started worker holds, and what it gives back."""

from __future__ import annotations

import gc

from fastapi.testclient import TestClient

from scrapvision.service.app import create_app
from tests.service.conftest import RecordingAudit


def test_startup_objects_are_frozen_out_of_full_collections_until_shutdown(
        make_settings, audit: RecordingAudit) -> None:
    gc.unfreeze()  # whatever an earlier test left
    with TestClient(create_app(make_settings(), audit_store=audit)) as client:
        assert client.get("/readyz").status_code == 200
        # the app, its model session and the libraries behind them
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0
