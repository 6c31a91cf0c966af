"""Audit store settings, nested in the service settings as `audit`.

Every knob that bounds memory, disk or lost data lives here, so a plant can size the
store to its lines: the commit interval is also the durability window after a hard kill.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from scrapvision.configsection import ConfigSection

_SHIFT_START = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class FrameSampling(ConfigSection):
    """Which frames keep a downscaled copy for human review, and how many per minute."""

    enabled: bool = True
    margin_threshold: float = Field(
        0.2, ge=0, le=1, description="keep frames whose top-1 minus top-2 probability is below"
    )
    keep_recirculated: bool = Field(True, description="keep frames of recirculated items")
    random_rate: float = Field(0.01, ge=0, le=1, description="share of other frames kept at random")
    per_class_per_minute: int = Field(
        2, ge=0, description="first N frames of every class each minute, so every class is seen"
    )
    max_per_minute: int = Field(
        60, ge=0, description="cap on frames kept per line and worker process per minute "
        "(bounds disk use)"
    )
    max_pending: int = Field(
        64, ge=1, description="frames waiting for the writer; beyond it frames (not records) drop"
    )
    longest_side: int = Field(320, ge=32, le=4096, description="downscaled frame size")
    jpeg_quality: int = Field(85, ge=30, le=100)


class AuditSettings(ConfigSection):
    """Where decisions are stored, how they are written, and how long they are kept."""

    url: str = Field(
        "sqlite:///data/audit.db",
        description="SQLAlchemy URL: SQLite (WAL) embedded, or postgresql+psycopg://... "
        "for several service processes or machines",
    )
    frames_dir: Path = Field(Path("data/frames"), description="content-addressed review frames")
    commit_interval_ms: float = Field(
        100, gt=0, le=200,
        description="group-commit period; after a hard kill at most this window is lost",
    )
    max_buffered: int = Field(
        50_000, ge=1, description="records held in memory while the database is slow or away"
    )
    max_batch: int = Field(5_000, ge=1, description="records written per transaction at most")
    retry_max_s: float = Field(5.0, gt=0, description="longest wait between write retries")
    max_age_days: float | None = Field(
        90, gt=0, description="decisions older than this are pruned (reviewed ones are kept)"
    )
    max_rows: int | None = Field(
        None, ge=1, description="keep at most this many unreviewed decisions (oldest pruned)"
    )
    rollup_max_age_days: float = Field(
        400, gt=0, description="per-minute tallies are kept this long"
    )
    prune_interval_s: float = Field(3600, gt=0, description="how often retention runs")
    orphan_frame_days: float = Field(
        2, gt=0, description="frame files no decision refers to are deleted once unused this "
        "long (a frame is written before its decision commits, which may wait in the buffer "
        "while the database is away)"
    )
    shift_starts: list[str] = Field(
        default_factory=lambda: ["06:00", "14:00", "22:00"],
        description="local start times of the shifts, HH:MM",
    )
    timezone: str = Field("UTC", description="IANA zone the shift starts are given in")
    frames: FrameSampling = Field(default_factory=FrameSampling)

    @field_validator("shift_starts")
    @classmethod
    def _shift_starts(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one shift start (HH:MM)")
        for start in value:
            if not _SHIFT_START.match(start):
                raise ValueError(f"shift start '{start}' is not HH:MM (24 h)")
        return sorted(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(f"unknown time zone '{value}'") from error
        return value

    def shift_start(self, moment: datetime) -> datetime:
        """Start (UTC) of the shift `moment` falls in; shifts start daily at `shift_starts`."""
        local = moment.astimezone(ZoneInfo(self.timezone))
        candidates = []
        for day in (local.date() - timedelta(days=1), local.date()):
            for start in self.shift_starts:
                hours, minutes = map(int, start.split(":"))
                candidates.append(datetime(day.year, day.month, day.day, hours, minutes,
                                           tzinfo=local.tzinfo))
        return max(c for c in candidates if c <= local).astimezone(UTC)
