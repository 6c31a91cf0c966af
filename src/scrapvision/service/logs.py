"""Structured (JSON) logs for the service and uvicorn, one object per line."""

from __future__ import annotations

from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS

JSON_FORMAT = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"


def log_config(level: str = "info") -> dict[str, Any]:
    """`logging.config.dictConfig` dict (also uvicorn's `log_config`) with JSON output.

    uvicorn's access log is left at WARNING: one line per frame would cost more than the
    decision itself; per-frame figures are in /metrics and the audit store instead.
    """
    level = level.upper()
    handler = {"class": "logging.StreamHandler", "formatter": "json",
               "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "pythonjsonlogger.json.JsonFormatter",
                                "fmt": JSON_FORMAT, "rename_fields": {"levelname": "level"},
                                # uvicorn's ANSI-coloured copy of each message
                                "reserved_attrs": [*RESERVED_ATTRS, "color_message"]}},
        "handlers": {"default": handler},
        "loggers": {
            "scrapvision": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["default"], "level": "WARNING",
                               "propagate": False},
        },
    }
