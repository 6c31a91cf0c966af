"""Where each frame outcome goes besides the HTTP answer: audit store, MQTT, metrics.

Every call here must return at once: the audit store and the MQTT client buffer (bounded)
and write from their own threads.
"""

from __future__ import annotations

from typing import Protocol

from scrapvision.records import DecisionRecord
from scrapvision.service import metrics


class AuditSink(Protocol):
    def submit(self, record: DecisionRecord, frame: bytes | None = None) -> None: ...


class Publisher(Protocol):
    def publish(self, record: DecisionRecord) -> None: ...


class DecisionSink:
    def __init__(self, audit: AuditSink, publisher: Publisher | None = None) -> None:
        self.audit = audit
        self.publisher = publisher

    def emit(self, record: DecisionRecord, frame: bytes | None) -> None:
        metrics.DECISIONS.labels(record.line, record.class_name or "", record.action).inc()
        if record.class_name is not None and not record.in_time:
            metrics.LATE_DECIDED.labels(record.line).inc()
        self.audit.submit(record, frame)
        if self.publisher is not None:
            self.publisher.publish(record)
