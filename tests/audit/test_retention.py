"""Retention: old and excess unreviewed decisions go, reviewed ones and shared frames stay."""

from __future__ import annotations

import os
import time

from sqlalchemy import event, func, insert, select
from tinymodel import colour_frame

from scrapvision.audit import queries, reviews
from scrapvision.audit.retention import prune
from scrapvision.audit.store import AuditStore
from scrapvision.audit.tables import decisions, reviews as reviews_table, tally_minutes

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


def test_frames_no_decision_refers_to_are_swept_once_unused_long_enough(store, make_decision):
    ids = _seed(store, make_decision)
    frame_store = store.frame_store
    stale_orphan = frame_store.save(colour_frame("green"))  # its row never committed
    fresh_orphan = frame_store.save(colour_frame("green", 320, 240))  # its row may be buffered
    for frame_hash, age_days in [(stale_orphan, 3), (fresh_orphan, 1),
                                 (ids["new"]["frame_hash"], 3)]:
        written = NOW - age_days * DAY
        os.utime(frame_store.path(frame_hash), (written, written))
    settings = store.settings.model_copy(update={"max_age_days": None, "orphan_frame_days": 2})
    assert prune(store.engine, frame_store, settings, now=NOW).frames == 1
    assert not frame_store.path(stale_orphan).exists()
    assert frame_store.path(fresh_orphan).exists()
    assert frame_store.path(ids["new"]["frame_hash"]).exists()  # a decision refers to it


def test_a_frame_saved_again_restarts_its_grace_period(store):
    frame_hash = store.frame_store.save(colour_frame("green"))
    path = store.frame_store.path(frame_hash)
    os.utime(path, (NOW - 3 * DAY, NOW - 3 * DAY))
    assert store.frame_store.save(colour_frame("green")) == frame_hash
    assert path.stat().st_mtime > NOW


def test_a_decision_reviewed_while_its_chunk_is_pruned_is_kept(store, make_decision):
    ids = _seed(store, make_decision)
    reviewed_meanwhile = ids["old"]["id"]

    def review_after_the_select(connection, clause, *args) -> None:
        if getattr(clause, "is_select", False) and not connection.info.get("reviewed"):
            connection.info["reviewed"] = True  # once: as QA would, between SELECT and DELETE
            connection.execute(insert(reviews_table).values(
                decision_id=reviewed_meanwhile, time=NOW, reviewer="anna", verdict="confirm",
                label="red"))

    settings = store.settings.model_copy(update={"max_age_days": 7})
    event.listen(store.engine, "after_execute", review_after_the_select)
    try:
        result = prune(store.engine, store.frame_store, settings, now=NOW)
    finally:
        event.remove(store.engine, "after_execute", review_after_the_select)
    assert result.decisions == 0
    left = {item["frame_id"] for item in
            queries.page(store.engine, queries.DecisionFilter())["items"]}
    assert {"old", "old-reviewed"} <= left
    assert _count(store, reviews_table) == 2


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
