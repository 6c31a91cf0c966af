"""Retention: old and excess unreviewed decisions go, reviewed ones and shared frames stay."""

from __future__ import annotations

import time

from sqlalchemy import func, select
from tinymodel import colour_frame

from scrapvision.audit import queries, reviews
from scrapvision.audit.retention import prune
from scrapvision.audit.store import AuditStore
from scrapvision.audit.tables import decisions, tally_minutes

DAY = 86_400.0
NOW = 1_795_300_000.0


def _count(store, table=decisions) -> int:
    with store.engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(table))


def _seed(store, make_decision):
    """Decisions 10, 5 and 1 days old; the oldest two share one frame, one is reviewed."""
    shared = colour_frame("red")
    for age, frame_id, frame in [(10, "old", shared), (10, "old-reviewed", None),
                                 (5, "middle", shared), (1, "new", colour_frame("blue"))]:
        store.submit(make_decision(time=NOW - age * DAY, frame_id=frame_id, margin=0.0), frame)
    assert store.flush()
    ids = {item["frame_id"]: item for item in
           queries.page(store.engine, queries.DecisionFilter())["items"]}
    reviews.add_review(store.engine, ids["old-reviewed"]["id"], "anna", "confirm")
    return ids


def test_prune_by_age_keeps_reviewed_and_still_used_frames(store, make_decision):
    ids = _seed(store, make_decision)
    settings = store.settings.model_copy(update={"max_age_days": 7, "rollup_max_age_days": 7})
    result = prune(store.engine, store.frame_store, settings, now=NOW)
    assert result.decisions == 1 and result.frames == 0  # "middle" still uses the frame
    assert result.rollups == 1  # the minute ten days ago
    left = {item["frame_id"] for item in
            queries.page(store.engine, queries.DecisionFilter())["items"]}
    assert left == {"old-reviewed", "middle", "new"}
    assert store.frame_store.path(ids["middle"]["frame_hash"]).exists()
    assert _count(store, tally_minutes) == 2


def test_prune_by_row_count_deletes_oldest_and_orphan_frames(store, make_decision):
    ids = _seed(store, make_decision)
    settings = store.settings.model_copy(update={"max_age_days": None, "max_rows": 1})
    result = prune(store.engine, store.frame_store, settings, now=NOW)
    assert (result.decisions, result.frames) == (2, 1)
    assert not store.frame_store.path(ids["old"]["frame_hash"]).exists()
    assert _count(store) == 2  # "new" and the reviewed one
    assert prune(store.engine, store.frame_store, settings, now=NOW).decisions == 0


def test_running_store_prunes_in_the_background(audit_settings, make_decision):
    settings = audit_settings.model_copy(update={"max_age_days": 1, "prune_interval_s": 0.05})
    store = AuditStore(settings).start()
    try:
        store.submit(make_decision(time=NOW - 30 * DAY))
        assert store.flush()
        for _ in range(200):  # polls until the retention thread ran (no timing asserted)
            if _count(store) == 0:
                break
            time.sleep(0.05)
        assert _count(store) == 0
    finally:
        store.close()
