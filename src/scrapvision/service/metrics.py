"""Prometheus metrics of the service.

With several uvicorn workers, `scrapvision serve` sets `PROMETHEUS_MULTIPROC_DIR` before the
workers start, so every process writes its samples there and `/metrics` (answered by any
worker) adds them up. Gauges say how they combine across processes. The audit store's
counters live here too, so `GET /v1/audit/stats` reads back the same totals (`audit_totals`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.samples import Sample

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.12, 0.16, 0.32, 0.64, 1.28)

FRAME_LATENCY = Histogram(
    "scrapvision_frame_latency_seconds",
    "Time from receiving a frame to its decision (decode + inference + policy)",
    ["line"], buckets=_LATENCY_BUCKETS,
)
BATCH_FRAMES = Histogram(
    "scrapvision_batch_frames", "Frames per batch request", ["line"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
INFERENCE_BATCH = Histogram(
    "scrapvision_inference_batch_frames", "Frames per onnxruntime call (micro-batching)",
    ["model"], buckets=(1, 2, 4, 8, 16, 32),
)
INFERENCE_SIDE_BY_SIDE = Counter(
    "scrapvision_inference_side_by_side_total",
    "onnxruntime calls made by a standby inference thread beside the busy primary (event "
    "loop or thread), because a frame had waited a quarter of its line's deadline or is "
    "larger than 1080p", ["model"],
)
QUEUE_DEPTH = Gauge(
    "scrapvision_queue_depth", "Frames queued or in inference per line",
    ["line"], multiprocess_mode="livesum",
)
DECISIONS = Counter(
    "scrapvision_decisions_total", "Frame outcomes per line, class and action",
    ["line", "class_name", "action"],
)
LATE_DECIDED = Counter(
    "scrapvision_decided_after_fire_time_total",
    "Frames decided, but after their fire time (in_time=false)", ["line"],
)
REJECTED = Counter(
    "scrapvision_rejected_frames_total", "Frames refused as bad input, by HTTP status",
    ["line", "status"],
)
MQTT_NOT_PUBLISHED = Counter(
    "scrapvision_mqtt_not_published_total",
    "Decisions not published: the client's queue full, or QoS 0 while disconnected", ["line"],
)
WORKERS_STARTED = Gauge(
    "scrapvision_workers_started", "Worker processes that have loaded their models and serve",
    multiprocess_mode="livesum",
)
MODEL_INFO = Gauge(
    "scrapvision_model_info", "1 for the model version a process serves, 0 once replaced",
    ["model", "version"], multiprocess_mode="livemax",
)

# Audit store (audit/writer.py, audit/store.py): incremented per group commit, or on the rare
# paths that drop something; the gauges are set once per writer tick, never per record.
AUDIT_RECORDS = Counter(
    "scrapvision_audit_records_total",
    "Decisions by what the audit store did with them: written, dropped_full (buffer at its "
    "bound), rejected (refused by the database on their own), lost_at_close",
    ["outcome"],
)
AUDIT_RECORD_OUTCOMES = ("written", "dropped_full", "rejected", "lost_at_close")
AUDIT_COMMITS = Counter("scrapvision_audit_commits_total",
                        "Audit group commits (transactions) that wrote decisions")
AUDIT_WRITE_ERRORS = Counter("scrapvision_audit_write_errors_total",
                             "Audit group commits that failed: database unreachable, retried")
AUDIT_SUBMIT_ERRORS = Counter("scrapvision_audit_submit_errors_total",
                              "Decisions the audit store could not even queue (a bug)")
AUDIT_BUFFERED = Gauge(
    "scrapvision_audit_buffered", "Decisions waiting in memory for their audit group commit",
    multiprocess_mode="livesum",
)
AUDIT_LAST_COMMIT = Gauge(
    "scrapvision_audit_last_commit_timestamp_seconds",
    "Unix time of the latest audit group commit", multiprocess_mode="max",
)
AUDIT_STORES = Gauge("scrapvision_audit_stores", "Audit stores running (one per worker)",
                     multiprocess_mode="livesum")
AUDIT_FRAMES = Counter(
    "scrapvision_audit_review_frames_total",
    "Sampled review frames: kept, failed (not decodable), dropped_pending (too many waiting), "
    "skipped_by_cap (per-minute cap)", ["outcome"],
)
AUDIT_FRAME_OUTCOMES = ("kept", "failed", "dropped_pending", "skipped_by_cap")
AUDIT_FRAMES_PENDING = Gauge(
    "scrapvision_audit_review_frames_pending", "Review frames waiting for the audit writer",
    multiprocess_mode="livesum",
)
for _outcome in AUDIT_RECORD_OUTCOMES:  # every outcome exported, at 0 until it happens
    AUDIT_RECORDS.labels(_outcome)
for _outcome in AUDIT_FRAME_OUTCOMES:
    AUDIT_FRAMES.labels(_outcome)


def multiprocess_mode() -> bool:
    """True when every worker writes its samples to the shared multiprocess directory."""
    return bool(os.environ.get(MULTIPROC_ENV))


def registry() -> CollectorRegistry:
    """What `/metrics` exposes: every worker's samples in multiprocess mode, else this one's."""
    if multiprocess_mode():
        collected = CollectorRegistry()
        multiprocess.MultiProcessCollector(collected)
        return collected
    return REGISTRY


def render() -> tuple[bytes, str]:
    """The exposition text, summed over worker processes in multiprocess mode."""
    return generate_latest(registry()), CONTENT_TYPE_LATEST


def workers_started() -> int:
    """Worker processes whose app has started, summed over all of them in multiprocess mode.

    A worker killed without a clean exit keeps counting until its file is removed, so this
    can exceed the configured number while uvicorn restarts it: compare with `>=`.
    """
    return int(sum(sample.value for sample in _samples("scrapvision_workers_started")))


def audit_totals() -> dict[str, Any]:
    """The audit counters as `/metrics` shows them (summed over workers in multiprocess
    mode), in the shape of `AuditStore.stats()` plus `workers` (stores running)."""
    values = {(sample.name, sample.labels.get("outcome")): sample.value
              for sample in _samples("scrapvision_audit_")}

    def count(name: str, outcome: str | None = None) -> int:
        return int(values.get((name, outcome), 0))

    last_commit = values.get(("scrapvision_audit_last_commit_timestamp_seconds", None))
    return {
        "buffered": count("scrapvision_audit_buffered"),
        **{outcome: count("scrapvision_audit_records_total", outcome)
           for outcome in AUDIT_RECORD_OUTCOMES},
        "commits": count("scrapvision_audit_commits_total"),
        "write_errors": count("scrapvision_audit_write_errors_total"),
        "last_commit_time": last_commit or None,  # 0: no worker committed yet
        "submit_errors": count("scrapvision_audit_submit_errors_total"),
        "frames": {**{outcome: count("scrapvision_audit_review_frames_total", outcome)
                      for outcome in AUDIT_FRAME_OUTCOMES},
                   "pending": count("scrapvision_audit_review_frames_pending")},
        "workers": count("scrapvision_audit_stores"),
    }


def _samples(prefix: str) -> Iterator[Sample]:
    """Samples of the metrics named `prefix...`, as `/metrics` shows them."""
    for family in registry().collect():
        if family.name.startswith(prefix):
            yield from family.samples


def process_exited() -> None:
    """Drop this process's live gauges (queue depth, model info) from the shared files."""
    if multiprocess_mode():
        multiprocess.mark_process_dead(os.getpid())
