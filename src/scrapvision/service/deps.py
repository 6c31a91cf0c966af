"""Shared FastAPI dependencies of the service routes."""

from __future__ import annotations

from fastapi import HTTPException, WebSocketException, status
from starlette.requests import HTTPConnection

from scrapvision.service.lines import Line


async def get_line(line: str, connection: HTTPConnection) -> Line:
    """The configured line named in the path; 404 (or WS close 1008) when there is none."""
    return line_named(connection, line)


def line_named(connection: HTTPConnection, line: str) -> Line:
    """`get_line` as a plain call (see `auth.grant` for why)."""
    found = connection.app.state.lines.get(line)
    if found is None:
        detail = (f"no line named '{line}'; configured lines: "
                  f"{sorted(connection.app.state.lines)}")
        if connection.scope["type"] == "websocket":
            raise WebSocketException(status.WS_1008_POLICY_VIOLATION, reason=detail[:120])
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=detail)
    return found
