"""Throughput tallies per line: last minute, current shift, since recording started.

The counts come from the audit store's per-minute rollups, written in the same group
commit as the decisions, so they survive restarts and add up over every worker process
(and every machine sharing a PostgreSQL store). Rates are derived here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from scrapvision.service.auth import require_role
from scrapvision.service.deps import get_line
from scrapvision.service.lines import Line

router = APIRouter(prefix="/v1/lines", tags=["tallies"])

DECIDED = ("eject", "pass", "recirculate")


def shift_start(now: datetime, starts: list[str], timezone: str) -> datetime:
    """Start of the shift `now` falls in, for shifts starting daily at `starts` (HH:MM)."""
    local = now.astimezone(ZoneInfo(timezone))
    candidates = []
    for day in (local.date() - timedelta(days=1), local.date()):
        for text in starts:
            hours, minutes = map(int, text.split(":"))
            candidates.append(datetime(day.year, day.month, day.day, hours, minutes,
                                       tzinfo=local.tzinfo))
    return max(c for c in candidates if c <= local).astimezone(UTC)


def with_rates(tally: dict[str, Any], since: datetime | None, until: datetime) -> dict[str, Any]:
    """Add frames/s and items/min over the whole minutes the store counted.

    A window without a start begins at the first recorded decision.
    """
    start = since.replace(second=0, microsecond=0) if since else tally.get("first_time")
    seconds = (until - start).total_seconds() if start else 0.0
    decided = sum(tally["per_action"].get(action, 0) for action in DECIDED)
    return {
        **tally,
        "since": start,
        "until": until,
        "seconds": seconds,
        "dropped": tally["late"] + tally["overload"],
        "frames_per_s": tally["total"] / seconds if seconds > 0 else 0.0,
        "items_per_min": decided * 60.0 / seconds if seconds > 0 else 0.0,
    }


@router.get("/{line}/tallies", dependencies=[Depends(require_role("qa"))])
async def line_tallies(request: Request, line: Annotated[Line, Depends(get_line)]) -> dict:
    """Per class / bin / action counts, frames/s, items/min, late and dropped frames."""
    store = request.app.state.audit
    audit_settings = request.app.state.settings.audit
    now = datetime.now(UTC)
    windows = {
        "last_minute": now - timedelta(minutes=1),
        "shift": shift_start(now, audit_settings.shift_starts, audit_settings.timezone),
        "since_start": None,
    }
    out: dict[str, Any] = {"line": line.name}
    for name, since in windows.items():
        tally = await run_in_threadpool(store.tallies, line.name, since, None)
        out[name] = with_rates(tally, since, now)
    return out
