"""Access control on every route: role-based API keys, hashed and compared in constant
time, closed CORS, request size limits and no path traversal.

`test_every_route_refuses_...` walks `app.routes`, so a route added without an access rule
fails here until it is given one below.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi import routing
from fastapi.testclient import TestClient
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect
from tinymodel import colour_frame

from scrapvision.service import auth
from scrapvision.service.auth import KeyRing
from scrapvision.settings import ApiKey

from .conftest import KEYS, wait_for

PUBLIC = {  # answer without a key, by design: probes, scrape, the static QA shell, API docs
    "/healthz", "/readyz", "/metrics", "/qa", "/qa/static/{name}",
    "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
}
ROLE = {
    "/v1/lines": "qa",
    "/v1/lines/{line}/frames": "frames",
    "/v1/lines/{line}/batch": "frames",
    "/v1/lines/{line}/stream": "frames",
    "/v1/lines/{line}/tallies": "qa",
    "/v1/models": "qa",
    "/v1/models/{name}/load": "admin",
    "/v1/models/{name}/rollback": "admin",
}
AUDIT_PREFIX = "/v1/audit/"  # the whole audit API is for QA
PATH_VALUES = {"line": "tiny", "name": "tiny", "decision_id": "1", "frame_hash": "0" * 64}
WS_POLICY_VIOLATION = 1008


def required_role(path: str) -> str:
    if path.startswith(AUDIT_PREFIX):
        return "qa"
    assert path in ROLE, f"route {path} has no access rule in this test: add it to ROLE or PUBLIC"
    return ROLE[path]


def wrong_roles(role: str) -> list[str]:
    return [other for other in ("frames", "qa") if other != role]


def batch_body() -> bytes:
    frame, meta = colour_frame("red"), b"{}"
    return struct.pack(">I", len(meta)) + meta + struct.pack(">I", len(frame)) + frame


def request_kwargs(path: str) -> dict[str, Any]:
    """A well-formed body for the route, so only the key can make it fail."""
    if path.endswith("/frames"):
        return {"content": colour_frame("red"), "headers": {"Content-Type": "image/jpeg"}}
    if path.endswith("/batch"):
        return {"content": batch_body(),
                "headers": {"Content-Type": "application/x-scrapvision-batch"}}
    if path.endswith("/review"):
        return {"json": {"reviewer": "anna", "verdict": "confirm"}}
    return {}


def guarded_routes(app) -> list[tuple[str, str]]:
    """(method or 'WS', path template) of every route that is not public."""
    found = []
    for context in routing.iter_route_contexts(app.routes):
        if context.path in PUBLIC:
            continue
        methods = sorted(context.methods - {"HEAD"}) if context.methods else ["WS"]
        found.extend((method, context.path) for method in methods)
    return found


def call(client: TestClient, method: str, path: str, key: str | None) -> int:
    """HTTP status, or the WebSocket close code (1000 once accepted)."""
    headers = {"X-API-Key": key} if key is not None else {}
    url = path.format(**PATH_VALUES)
    if method == "WS":
        try:
            with client.websocket_connect(url, headers=headers) as websocket:
                websocket.close()
                return 1000
        except WebSocketDisconnect as closed:
            return closed.code
    kwargs = request_kwargs(path)
    kwargs["headers"] = {**kwargs.get("headers", {}), **headers}
    return client.request(method, url, **kwargs).status_code


@pytest.fixture
def keyed(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(keys=True)


def test_route_walk_finds_the_api(keyed: TestClient) -> None:
    """Guard against the walk silently finding nothing (e.g. after a FastAPI change)."""
    paths = {path for _, path in guarded_routes(keyed.app)}
    assert set(ROLE) <= paths
    assert {"/v1/audit/decisions", "/v1/audit/frames/{frame_hash}"} <= paths


def test_every_route_refuses_no_key_a_wrong_key_and_a_wrong_role(keyed: TestClient,
                                                                 count_case) -> None:
    for method, path in guarded_routes(keyed.app):
        role = required_role(path)
        refused = WS_POLICY_VIOLATION if method == "WS" else None
        for key, expected in [(None, refused or 401), ("not-a-key", refused or 401),
                              *[(KEYS[other], refused or 403) for other in wrong_roles(role)]]:
            count_case()
            assert call(keyed, method, path, key) == expected, (method, path, key)


def test_every_route_lets_its_role_and_admin_in(keyed: TestClient) -> None:
    for method, path in guarded_routes(keyed.app):
        for role in {required_role(path), "admin"}:
            status = call(keyed, method, path, KEYS[role])
            assert status not in (401, 403, WS_POLICY_VIOLATION), (method, path, role, status)


def test_unknown_line_does_not_answer_before_the_key_is_checked(keyed: TestClient) -> None:
    """A stranger must not learn which lines exist (401, not 404)."""
    assert keyed.post("/v1/lines/nope/frames", content=colour_frame("red")).status_code == 401
    assert keyed.get("/v1/lines/nope/tallies").status_code == 401


def test_key_in_query_works_for_websockets_only_with_the_right_role(keyed: TestClient) -> None:
    with keyed.websocket_connect(f"/v1/lines/tiny/stream?api_key={KEYS['frames']}") as ws:
        ws.send_bytes(colour_frame("red"))
        assert ws.receive_json()["class_name"] == "red"
    with pytest.raises(WebSocketDisconnect) as closed:
        with keyed.websocket_connect(f"/v1/lines/tiny/stream?api_key={KEYS['qa']}"):
            pass
    assert closed.value.code == WS_POLICY_VIOLATION


def test_public_routes_answer_without_a_key(keyed: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/qa", "/qa/static/qa.js"):
        assert keyed.get(path).status_code == 200, path


def test_qa_page_is_a_shell_that_shows_no_data_without_a_qa_key(keyed: TestClient) -> None:
    """/qa answers without a key by design, so it must never carry data itself: what it
    shows comes from /v1/audit/*, which needs the QA key the user types into it."""
    headers = {"X-API-Key": KEYS["frames"], "Content-Type": "image/jpeg",
               "X-Frame-Id": "secret-frame-id"}
    assert keyed.post("/v1/lines/tiny/frames", content=colour_frame("red"),
                      headers=headers).status_code == 200
    wait_for(lambda: keyed.get("/v1/audit/decisions",
                               headers={"X-API-Key": KEYS["qa"]}).json()["items"],
             "the decision to be stored")
    for path in ("/qa", "/qa/static/qa.js", "/qa/static/qa.css"):
        page = keyed.get(path)
        assert page.status_code == 200 and b"secret-frame-id" not in page.content
    assert keyed.get("/v1/audit/decisions").status_code == 401


def test_keys_are_configured_only_as_sha256_digests() -> None:
    with pytest.raises(ValidationError, match="sha256"):
        ApiKey(name="line", role="frames", sha256="frames-secret")
    with pytest.raises(ValidationError, match="role"):
        ApiKey(name="root", role="root", sha256=auth.hash_key("x"))


def test_keyring_holds_no_clear_key() -> None:
    ring = KeyRing([ApiKey(name=r, role=r, sha256=auth.hash_key(k)) for r, k in KEYS.items()])
    held = repr(vars(ring))
    assert all(key not in held for key in KEYS.values())
    assert ring.role_of(KEYS["qa"]) == "qa" and ring.role_of("qa") is None


def test_key_check_does_the_same_constant_time_work_for_every_guess(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: each guess is compared, digest against digest, with every key."""
    ring = KeyRing([ApiKey(name=r, role=r, sha256=auth.hash_key(k)) for r, k in KEYS.items()])
    compared: list[tuple[str, str]] = []
    real = auth.hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    for guess in [KEYS["frames"], KEYS["admin"], "wrong", "x" * 1000]:
        compared.clear()
        ring.role_of(guess)
        assert len(compared) == len(KEYS)
        assert all(len(a) == len(b) == 64 for a, b in compared)  # lengths leak nothing


@pytest.mark.parametrize("method", ["OPTIONS", "GET"])
def test_cors_is_closed_by_default(keyed: TestClient, method: str) -> None:
    headers = {"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "GET",
               "X-API-Key": KEYS["qa"]}
    response = keyed.request(method, "/v1/audit/decisions", headers=headers)
    assert "access-control-allow-origin" not in response.headers


def test_frame_and_batch_bodies_over_the_limit_are_413(make_client) -> None:
    client = make_client(keys=True, max_frame_bytes=1024, max_batch_frames=2)
    headers = {"X-API-Key": KEYS["frames"], "Content-Type": "image/jpeg"}
    big = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))[1]
    assert big.size > 1024 * 2
    assert client.post("/v1/lines/tiny/frames", content=big.tobytes(),
                       headers=headers).status_code == 413
    batch_headers = {**headers, "Content-Type": "application/x-scrapvision-batch"}
    three = batch_body() * 3
    assert client.post("/v1/lines/tiny/batch", content=three,
                       headers=batch_headers).status_code == 413


def test_frame_body_without_content_length_is_cut_at_the_limit(make_client) -> None:
    client = make_client(keys=True, max_frame_bytes=1024)
    chunks = iter([b"\xff\xd8\xff" + b"\0" * 1000, b"\0" * 1000, b"\0" * 1000])
    response = client.post("/v1/lines/tiny/frames", content=chunks,
                           headers={"X-API-Key": KEYS["frames"], "Content-Type": "image/jpeg"})
    assert response.status_code == 413


def test_websocket_frame_over_the_limit_is_answered_413_and_the_stream_goes_on(
        make_client) -> None:
    client = make_client(keys=True, max_frame_bytes=1024)
    url = f"/v1/lines/tiny/stream?api_key={KEYS['frames']}"
    with client.websocket_connect(url) as websocket:
        websocket.send_bytes(b"\xff\xd8\xff" + b"\0" * 2000)
        assert websocket.receive_json()["status"] == 413
        websocket.send_bytes(colour_frame("red"))
        assert websocket.receive_json()["class_name"] == "red"


def test_json_bodies_are_size_limited(keyed: TestClient) -> None:
    """A QA or admin JSON body cannot make the service buffer megabytes."""
    huge = b'{"reviewer": "' + b"a" * (16 * 1024 * 1024) + b'", "verdict": "confirm"}'
    for path, role in [("/v1/audit/decisions/1/review", "qa"), ("/v1/models/tiny/load", "admin")]:
        response = keyed.post(path, content=huge, headers={
            "X-API-Key": KEYS[role], "Content-Type": "application/json"})
        assert response.status_code == 413, path
    small = keyed.post("/v1/audit/decisions/1/review", headers={"X-API-Key": KEYS["qa"]},
                       json={"reviewer": "anna", "verdict": "confirm"})
    assert small.status_code == 404  # read and validated: there is just no decision 1 yet


TRAVERSALS = [
    "..%2F..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "%2Fetc%2Fpasswd",
    "..\\..\\audit.db", "....//....//etc/passwd", "00" + "%2F.." * 31,
    "0" * 62 + "%00", "../" + "0" * 61, "0" * 64 + "%2F..%2F..%2Faudit.db",
]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_no_path_traversal_through_audit_frames(keyed: TestClient, name: str) -> None:
    response = keyed.get(f"/v1/audit/frames/{name}", headers={"X-API-Key": KEYS["qa"]})
    assert response.status_code in (404, 422)
    assert b"root:" not in response.content and b"SQLite" not in response.content


@pytest.mark.parametrize("name", [*TRAVERSALS, "qa.html", "..%2Fstore.py", "%2e%2e%2froutes.py"])
def test_no_path_traversal_through_qa_static(keyed: TestClient, name: str) -> None:
    response = keyed.get(f"/qa/static/{name}")
    assert response.status_code == 404
    assert b"import" not in response.content


@pytest.mark.parametrize("name", ["..%2F..%2Fetc", "%2e%2e", ".hidden", "tiny%2F..%2Ftiny"])
def test_no_path_traversal_through_model_names(keyed: TestClient, name: str) -> None:
    headers = {"X-API-Key": KEYS["admin"]}
    for action in ("load", "rollback"):
        assert keyed.post(f"/v1/models/{name}/{action}", headers=headers).status_code == 404


def test_export_file_name_is_the_servers_not_the_clients(keyed: TestClient) -> None:
    response = keyed.get("/v1/audit/decisions", params={"format": "csv", "line": "../../x"},
                         headers={"X-API-Key": KEYS["qa"]})
    assert response.status_code == 200
    disposition = response.headers["content-disposition"]
    assert "/" not in disposition.split("filename=")[1] and ".." not in disposition
