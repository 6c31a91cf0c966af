"""API keys and roles on every service route."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from tinymodel import colour_frame

from scrapvision.service.app import create_app
from scrapvision.service.auth import KeyRing, hash_key
from scrapvision.settings import ApiKey

KEYS = {"frames": "line-key-1", "qa": "qa-key-1", "admin": "admin-key-1"}


@pytest.fixture
def secured(make_settings) -> Iterator[TestClient]:
    """The app with keys of each role, on the real audit store (its routes need it)."""
    settings = make_settings(api_keys=[ApiKey(name=f"{role} key", role=role,
                                              sha256=hash_key(key))
                                       for role, key in KEYS.items()])
    with TestClient(create_app(settings)) as client:
        yield client


ROUTES = [  # (method, path, role that may call it)
    ("post", "/v1/lines/tiny/frames", "frames"),
    ("post", "/v1/lines/tiny/batch", "frames"),
    ("get", "/v1/lines", "qa"),
    ("get", "/v1/lines/tiny/tallies", "qa"),
    ("get", "/v1/models", "qa"),
    ("get", "/v1/audit/decisions", "qa"),
    ("post", "/v1/models/tiny/load", "admin"),
    ("post", "/v1/models/tiny/rollback", "admin"),
]


@pytest.mark.parametrize(("method", "path", "role"), ROUTES)
def test_each_route_needs_a_key_of_its_role(secured: TestClient, method: str, path: str,
                                            role: str) -> None:
    call = getattr(secured, method)
    kwargs = {"content": colour_frame("red")} if method == "post" else {}
    assert call(path, **kwargs).status_code == 401
    assert call(path, headers={"X-API-Key": "wrong"}, **kwargs).status_code == 401
    for other, key in KEYS.items():
        status = call(path, headers={"X-API-Key": key}, **kwargs).status_code
        allowed = other in (role, "admin")
        assert (status not in (401, 403)) == allowed, (other, status)
        if not allowed:
            assert status == 403


def test_probes_and_metrics_stay_open(secured: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert secured.get(path).status_code == 200


def test_stream_needs_a_frames_key(secured: TestClient) -> None:
    with pytest.raises(WebSocketDisconnect) as refused:
        with secured.websocket_connect("/v1/lines/tiny/stream") as ws:
            ws.receive_json()
    assert refused.value.code == 1008
    with secured.websocket_connect(f"/v1/lines/tiny/stream?api_key={KEYS['frames']}") as ws:
        ws.send_bytes(colour_frame("red"))
        assert ws.receive_json()["class_name"] == "red"


def test_keys_are_matched_by_digest_only() -> None:
    ring = KeyRing([ApiKey(name="a", role="qa", sha256=hash_key("secret"))])
    assert ring.role_of("secret") == "qa"
    assert ring.role_of("secret ") is None
    assert ring.role_of(hash_key("secret")) is None  # the digest itself is not a key
    assert KeyRing([]).open
