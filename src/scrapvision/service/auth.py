"""API keys with roles: `frames` (line clients post frames), `qa` (read and review),
`admin` (load models, everything else; implies every role).

Keys are configured as SHA-256 digests, never in clear. A presented key is hashed and
compared with `hmac.compare_digest` against every configured digest, so neither timing nor
early exit tells an attacker how close a guess was. With no keys configured the service is
open, and `scrapvision serve` then binds to localhost only.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import Literal

from fastapi import HTTPException, Security, WebSocketException, status
from fastapi.security import APIKeyHeader
from starlette.requests import HTTPConnection

from scrapvision.settings import ApiKey

Role = Literal["frames", "qa", "admin"]
API_KEY_HEADER = "X-API-Key"
API_KEY_QUERY = "api_key"  # for browser WebSocket clients, which cannot set headers

_api_key_header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                               description="API key; roles frames / qa / admin")
# OpenAPI's name for that scheme, for routes that check keys without the dependency
API_KEY_SCHEME = _api_key_header.scheme_name


def hash_key(key: str) -> str:
    """The SHA-256 hex digest to put in the `api_keys` config for `key`."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """The configured keys; `role_of` answers which role a presented key has, if any."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._keys = [(key.sha256, key.role) for key in keys]

    @property
    def open(self) -> bool:
        """No keys configured: every request is allowed (localhost-only service)."""
        return not self._keys

    def role_of(self, presented: str) -> str | None:
        digest = hash_key(presented)
        found = None
        for stored, role in self._keys:  # no early exit: same work for every guess
            if hmac.compare_digest(digest, stored):
                found = role
        return found


def require_role(role: Role) -> Callable[..., str | None]:
    """FastAPI dependency: the request must carry a key of `role` (or admin).

    Works for HTTP routes and WebSockets (header, or `?api_key=` for browsers); returns the
    role that was granted, or None when the service has no keys configured. `async` although
    it never awaits: FastAPI runs sync dependencies in a thread pool, a hop per request.
    """

    async def check(connection: HTTPConnection,
                    header_key: str | None = Security(_api_key_header)) -> str | None:
        return grant(connection, role, header_key)

    return check


def grant(connection: HTTPConnection, role: Role, header_key: str | None) -> str | None:
    """`require_role` as a plain call, for the frame routes, which skip FastAPI's dependency
    resolution (`routes.lines.DirectRoute`): the granted role, or None when the service is
    open; raises 401/403 (WS close 1008)."""
    keyring: KeyRing = connection.app.state.keyring
    if keyring.open:
        return None
    presented = header_key or connection.query_params.get(API_KEY_QUERY)
    granted = keyring.role_of(presented) if presented else None
    if granted is None:
        _refuse(connection, status.HTTP_401_UNAUTHORIZED, "missing or unknown API key")
    if granted != role and granted != "admin":
        _refuse(connection, status.HTTP_403_FORBIDDEN,
                f"this API key has role '{granted}', the route needs '{role}'")
    return granted


def _refuse(connection: HTTPConnection, code: int, detail: str) -> None:
    if connection.scope["type"] == "websocket":
        raise WebSocketException(code=status.WS_1008_POLICY_VIOLATION, reason=detail)
    headers = {"WWW-Authenticate": API_KEY_HEADER} if code == 401 else None
    raise HTTPException(status_code=code, detail=detail, headers=headers)
