"""Searching the decision log: filters, keyset pages, streamed CSV/JSONL export, facets.

Pages are keyset-paginated on the decision id (newest first), so page N costs the same as
page 1 however large the log grows; `total` is counted once per query for the page header.
Each decision comes with its latest review, if any; earlier reviews stay in the reviews
table (see `reviews.history`).
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints, model_validator
from sqlalchemy import Engine, Select, func, select

from scrapvision.audit.frames import FrameReason
from scrapvision.audit.tables import decisions, reviews, tally_minutes

EXPORT_CHUNK = 1_000
MAX_PAGE = 500

# The newest review of each reviewed decision: its verified label.
latest_review_ids = (select(reviews.c.decision_id, func.max(reviews.c.id).label("review_id"))
                     .group_by(reviews.c.decision_id).subquery("latest_review_ids"))
latest_review = reviews.alias("latest_review")

DECISION_COLUMNS = [column.name for column in decisions.columns]
REVIEW_COLUMNS = ["review_verdict", "review_label", "reviewer", "reviewed_at"]


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(2200, 1, 1, tzinfo=UTC)


def _utc_within_reason(moment: datetime) -> datetime:
    """Naive times are UTC; years outside 1970..2199 are refused (no overflow downstream)."""
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if not EPOCH <= moment < FAR_FUTURE:
        raise ValueError("time must lie between 1970 and 2199")
    return moment


Moment = Annotated[datetime, AfterValidator(_utc_within_reason)]
# Names as the service writes them: printable, bounded (PostgreSQL refuses NUL characters).
Name = Annotated[str, StringConstraints(min_length=1, max_length=128,
                                        pattern=r"^[^\x00-\x1f\x7f]+$")]


class DecisionFilter(BaseModel):
    """What the QA page and exports can filter on; every field is optional."""

    line: Name | None = None
    since: Moment | None = Field(None, description="decisions at or after (ISO 8601 or unix s)")
    until: Moment | None = Field(None, description="decisions before (ISO 8601 or unix s)")
    class_name: Name | None = None
    action: Literal["eject", "pass", "recirculate", "late", "overload"] | None = None
    bin: Name | None = None
    min_confidence: float | None = Field(None, ge=0, le=1)
    max_confidence: float | None = Field(None, ge=0, le=1)
    model_name: Name | None = None
    model_version: Name | None = None
    reviewed: bool | None = None
    has_frame: bool | None = None
    frame_reason: FrameReason | None = Field(None, description="why the frame was kept")
    label: Name | None = Field(None, description="label given by the latest review")

    @model_validator(mode="after")
    def _ranges(self) -> DecisionFilter:
        if self.since and self.until and self.since >= self.until:
            raise ValueError("since must be before until")
        if (self.min_confidence is not None and self.max_confidence is not None
                and self.min_confidence > self.max_confidence):
            raise ValueError("min_confidence must not exceed max_confidence")
        return self


def with_latest_review(columns: list) -> Select:
    """SELECT `columns` FROM decisions, each joined with its latest review (if any)."""
    return (select(*columns)
            .select_from(decisions
                         .outerjoin(latest_review_ids,
                                    latest_review_ids.c.decision_id == decisions.c.id)
                         .outerjoin(latest_review,
                                    latest_review.c.id == latest_review_ids.c.review_id)))


def apply_filter(query: Select, where: DecisionFilter) -> Select:
    column = decisions.c
    equal = {"line": column.line, "class_name": column.class_name, "action": column.action,
             "bin": column.bin, "model_name": column.model_name,
             "model_version": column.model_version, "frame_reason": column.frame_reason,
             "label": latest_review.c.label}
    for name, target in equal.items():
        value = getattr(where, name)
        if value is not None:
            query = query.where(target == value)
    if where.since is not None:
        query = query.where(column.time >= where.since.timestamp())
    if where.until is not None:
        query = query.where(column.time < where.until.timestamp())
    if where.min_confidence is not None:
        query = query.where(column.confidence >= where.min_confidence)
    if where.max_confidence is not None:
        query = query.where(column.confidence <= where.max_confidence)
    if where.reviewed is not None:
        reviewed = latest_review_ids.c.review_id.is_not(None)
        query = query.where(reviewed if where.reviewed else ~reviewed)
    if where.has_frame is not None:
        has_frame = column.frame_hash.is_not(None)
        query = query.where(has_frame if where.has_frame else ~has_frame)
    return query


_ROW_COLUMNS = [*decisions.columns, latest_review.c.verdict.label("review_verdict"),
                latest_review.c.label.label("review_label"),
                latest_review.c.reviewer.label("reviewer"),
                latest_review.c.time.label("reviewed_at")]


def _item(row: Any) -> dict[str, Any]:
    item = {name: row._mapping[name] for name in DECISION_COLUMNS}
    item["review"] = None if row.review_verdict is None else {
        "verdict": row.review_verdict, "label": row.review_label, "reviewer": row.reviewer,
        "time": row.reviewed_at}
    return item


def _items(engine: Engine, where: DecisionFilter, limit: int,
           cursor: int | None) -> tuple[list[dict[str, Any]], int | None]:
    """Up to `limit` decisions older than `cursor` (newest first) and the next cursor."""
    query = (apply_filter(with_latest_review(_ROW_COLUMNS), where)
             .order_by(decisions.c.id.desc()).limit(limit + 1))
    if cursor is not None:
        query = query.where(decisions.c.id < cursor)
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    items = [_item(row) for row in rows[:limit]]
    return items, items[-1]["id"] if len(rows) > limit else None


def page(engine: Engine, where: DecisionFilter, limit: int = 50,
         cursor: int | None = None) -> dict[str, Any]:
    """One page, newest first: {items, total, next_cursor}; pass next_cursor for the next."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be within 1..{MAX_PAGE}")
    items, next_cursor = _items(engine, where, limit, cursor)
    # Counting needs the review join only when a review filter is set; without it the
    # count is answered from the decisions table and its indexes alone.
    by_review = where.reviewed is not None or where.label is not None
    count = (with_latest_review([func.count()]) if by_review
             else select(func.count()).select_from(decisions))
    with engine.connect() as connection:
        total = connection.scalar(apply_filter(count, where))
    return {"items": items, "total": total, "next_cursor": next_cursor}


def get(engine: Engine, decision_id: int) -> dict[str, Any] | None:
    """One decision with its latest review, or None."""
    with engine.connect() as connection:
        row = connection.execute(with_latest_review(_ROW_COLUMNS)
                                 .where(decisions.c.id == decision_id)).first()
    return None if row is None else _item(row)


def iterate(engine: Engine, where: DecisionFilter) -> Iterator[dict[str, Any]]:
    """Every matching decision, newest first, fetched in keyset chunks (bounded memory)."""
    cursor = None
    while True:
        items, cursor = _items(engine, where, EXPORT_CHUNK, cursor)
        yield from items
        if cursor is None:
            return


def _flat(item: dict[str, Any]) -> dict[str, Any]:
    review = item["review"] or {}
    flat = {name: item[name] for name in DECISION_COLUMNS}
    flat["top_k"] = json.dumps(item["top_k"])
    flat.update(review_verdict=review.get("verdict"), review_label=review.get("label"),
                reviewer=review.get("reviewer"), reviewed_at=review.get("time"))
    return flat


def export_csv(items: Iterator[dict[str, Any]]) -> Iterator[str]:
    """CSV text in pieces: a header, then one row per decision (top_k as JSON)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=DECISION_COLUMNS + REVIEW_COLUMNS)
    writer.writeheader()
    for count, item in enumerate(items, 1):
        writer.writerow(_flat(item))
        if count % 200 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def export_jsonl(items: Iterator[dict[str, Any]]) -> Iterator[str]:
    """One JSON object per line per decision, with its latest review."""
    for item in items:
        yield json.dumps(item) + "\n"


def facets(engine: Engine) -> dict[str, Any]:
    """Values the filters can take: lines, classes, bins, actions, model versions, labels."""
    rollup = tally_minutes.c
    with engine.connect() as connection:
        keys = connection.execute(select(rollup.line, rollup.class_name, rollup.bin,
                                          rollup.action).distinct()).all()
        models = connection.execute(select(decisions.c.model_name, decisions.c.model_version)
                                    .distinct()).all()
        labels = connection.scalars(select(reviews.c.label).distinct()).all()
    classes = sorted({key.class_name for key in keys if key.class_name})
    return {
        "lines": sorted({key.line for key in keys}),
        "classes": classes,
        "classes_by_line": {line: sorted({key.class_name for key in keys
                                          if key.line == line and key.class_name})
                            for line in {key.line for key in keys}},
        "bins": sorted({key.bin for key in keys if key.bin}),
        "actions": sorted({key.action for key in keys}),
        "models": [f"{name}:{version}" for name, version in sorted(models)],
        "model_versions": sorted({version for _, version in models}),
        "labels": sorted(set(labels) | set(classes)),
    }


def throughput(engine: Engine, line: str, since: datetime, until: datetime,
               bucket_s: int) -> dict[str, Any]:
    """Decisions per time bucket and action for one line, from the per-minute rollups."""
    if bucket_s < 60 or bucket_s % 60:
        raise ValueError("bucket_s must be a whole number of minutes")
    rollup = tally_minutes.c
    query = (select(rollup.minute, rollup.action, rollup["count"])
             .where(rollup.line == line, rollup.minute >= since.timestamp() // 60 * 60,
                    rollup.minute < until.timestamp()))
    buckets: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    with engine.connect() as connection:
        for minute, action, count in connection.execute(query):
            bucket = buckets[int(minute) // bucket_s * bucket_s]
            bucket[action] += int(count)
            bucket["total"] += int(count)
    return {"line": line, "bucket_s": bucket_s,
            "points": [{"time": start, **counts} for start, counts in sorted(buckets.items())]}
