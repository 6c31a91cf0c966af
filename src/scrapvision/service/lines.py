"""A sorting line at run time: bounded in-flight work, deadline drops, decision records.

This is the hot path. Per frame it costs: one check of the line's in-flight count, decode,
inference and policy (on the event loop, or handed to the model's inference threads: see
service/inference.py), and one `DecisionRecord`. Nothing here logs at INFO per frame.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from scrapvision.decode import DecodeError, check_dimensions, header_size
from scrapvision.policy import ItemFusion, Verdict
from scrapvision.records import DecisionRecord
from scrapvision.service import metrics
from scrapvision.service.inference import InferenceJob
from scrapvision.service.models import LoadedModel, ModelSlot
from scrapvision.service.sink import DecisionSink
from scrapvision.settings import LineSettings


# Share of its deadline a frame may wait for the model's busy event loop or primary
# inference thread before a standby thread takes it (see service/inference.py).
WAIT_SHARE = 0.25


class LineUnavailable(RuntimeError):
    """The line's model is not loaded (yet): the client should retry later (503)."""


@dataclass(slots=True)
class FrameMeta:
    """What the camera says about a frame (headers, query, batch header or WS message)."""

    frame_id: str
    capture_time: float | None = None  # unix seconds; None: the time it was received
    belt_position: float | None = None
    item_id: str | None = None


class Line:
    def __init__(self, name: str, settings: LineSettings, slot: ModelSlot,
                 sink: DecisionSink, max_pixels: int) -> None:
        self.name = name
        self.settings = settings
        self.slot = slot
        self.sink = sink
        self.max_pixels = max_pixels
        self.deadline_s = settings.effective_deadline_ms / 1000.0
        self.in_flight = 0  # only touched on the event loop: no lock needed
        self.fusion = ItemFusion(settings.fusion) if settings.fusion else None
        self._fusion_lock = threading.Lock()
        self._depth = metrics.QUEUE_DEPTH.labels(name)
        self._latency = metrics.FRAME_LATENCY.labels(name)

    @property
    def ready(self) -> bool:
        return self.slot.current is not None

    def describe(self) -> dict[str, Any]:
        loaded = self.slot.current
        return {
            "name": self.name,
            "model": self.settings.model,
            "model_version": loaded.version if loaded else None,
            "ready": loaded is not None,
            "deadline_ms": self.settings.effective_deadline_ms,
            "recirculate_bin": self.settings.recirculate_bin,
            "max_in_flight": self.settings.max_in_flight,
            "fusion": self.settings.fusion.model_dump() if self.settings.fusion else None,
            "classes": loaded.policies[self.name].describe() if loaded else None,
        }

    @property
    def full(self) -> bool:
        return self.in_flight >= self.settings.max_in_flight

    async def decide(self, frame: bytes, meta: FrameMeta, received: float) -> DecisionRecord:
        """Decide one frame; a "late" or "overload" record when it cannot be decided in time.

        Raises DecodeError for bad input (nothing is queued for it) and LineUnavailable when
        the line has no model.
        """
        loaded = self.slot.current
        if loaded is None:
            raise LineUnavailable(f"line '{self.name}' has no model loaded: "
                                  f"{self.slot.error or 'still loading'}")
        if not frame:
            raise DecodeError("empty frame body")
        # refuse non-images and pixel bombs before they take a place in the queue
        dimensions = header_size(frame)
        check_dimensions(*dimensions, self.max_pixels)
        fire_time = (meta.capture_time or received) + self.deadline_s
        if self.full:
            return self._finish(loaded, meta, frame, received, fire_time, None, "overload")
        if time.time() > fire_time:
            return self._finish(loaded, meta, frame, received, fire_time, None, "late")
        self.in_flight += 1
        self._depth.inc()
        wait_until = fire_time - (1.0 - WAIT_SHARE) * self.deadline_s
        job = InferenceJob(loaded.engine, frame, dimensions, fire_time, wait_until,
                           partial(self._conclude, loaded, meta.item_id))
        try:
            verdict = await self.slot.workers.run(job)
        finally:
            self.in_flight -= 1
            self._depth.dec()
        return self._finish(loaded, meta, frame, received, fire_time, verdict,
                            "late" if verdict is None else verdict.action)

    def _conclude(self, loaded: LoadedModel, item_id: str | None,
                  probs: np.ndarray) -> Verdict:
        """Runs where inference ran: fuse with the item's earlier frames, then decide.

        Only frames judged by the same model version are fused: another version's
        probabilities may have other classes, or the same ones in another order.
        """
        if self.fusion is not None and item_id:
            with self._fusion_lock:
                probs = self.fusion.fuse((loaded.version, item_id), probs)
        return loaded.policies[self.name].decide(probs)

    def _finish(self, loaded: LoadedModel, meta: FrameMeta, frame: bytes, received: float,
                fire_time: float, verdict: Verdict | None, action: str) -> DecisionRecord:
        now = time.time()
        record = DecisionRecord(
            time=now, line=self.name, frame_id=meta.frame_id,
            model_name=self.slot.name, model_version=loaded.version,
            action=action,  # type: ignore[arg-type]
            in_time=verdict is not None and now <= fire_time,
            latency_ms=(now - received) * 1000.0,
            item_id=meta.item_id, capture_time=meta.capture_time, fire_time=fire_time,
            belt_position=meta.belt_position,
        )
        if verdict is not None:
            record.class_name = verdict.class_name
            record.confidence = verdict.confidence
            record.margin = verdict.margin
            record.bin = verdict.bin
            record.top_k = verdict.top_k
            self._latency.observe(now - received)
        self.sink.emit(record, frame)
        return record
