"""Prometheus metrics of the service.

With several uvicorn workers, `scrapvision serve` sets `PROMETHEUS_MULTIPROC_DIR` before the
workers start, so every process writes its samples there and `/metrics` (answered by any
worker) adds them up. Gauges say how they combine across processes.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

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
    "Decisions not handed to the MQTT client (its queue full)", ["line"],
)
MODEL_INFO = Gauge(
    "scrapvision_model_info", "1 for the model version a process serves, 0 once replaced",
    ["model", "version"], multiprocess_mode="livemax",
)


def render() -> tuple[bytes, str]:
    """The exposition text, summed over worker processes in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def process_exited() -> None:
    """Drop this process's live gauges (queue depth, model info) from the shared files."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(os.getpid())
