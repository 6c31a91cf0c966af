"""The record of one sort decision: what the service returns, publishes and audits."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal

Action = Literal["eject", "pass", "recirculate", "late", "overload"]


@dataclass(slots=True)
class DecisionRecord:
    """One frame's outcome on one line.

    `action` is "eject" (to `bin`), "pass" (class has no bin), "recirculate" (not confident
    enough), "late" (deadline had passed before inference: dropped, never processed late)
    or "overload" (refused with 503 because the line's queue was full). For "late" and
    "overload" there is no class or confidence.
    """

    time: float  # unix seconds when the decision was made
    line: str
    frame_id: str
    model_name: str
    model_version: str
    action: Action
    in_time: bool
    latency_ms: float
    item_id: str | None = None
    capture_time: float | None = None  # unix seconds the camera took the frame
    fire_time: float | None = None  # capture_time + the line's deadline
    belt_position: float | None = None  # encoder count / position reported by the camera
    class_name: str | None = None
    confidence: float | None = None
    margin: float | None = None  # top-1 minus top-2 probability
    bin: str | None = None
    top_k: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Field -> value, shallow: `dataclasses.asdict` deep-copies and cost ~0.15 ms per
        frame on the serving hot path; records are never changed once made."""
        return {name: getattr(self, name) for name in _FIELD_NAMES}


_FIELD_NAMES = tuple(f.name for f in fields(DecisionRecord))
