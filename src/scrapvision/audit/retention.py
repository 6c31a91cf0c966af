"""Retention: keep the audit store within its age and row budgets.

Reviewed decisions are never pruned: they are the labelled data QA produced for the next
training run. A review frame file is deleted once no remaining decision refers to it
(identical frames share one file). Frame files no decision ever referred to (their rows
were refused by the database, or lost to a hard kill between the frame write and the
commit) are swept once unused for `orphan_frame_days`. Tally rollups have their own,
longer, age limit.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

from sqlalchemy import Engine, delete, exists, func, select

from scrapvision.audit.frames import FrameStore
from scrapvision.audit.settings import AuditSettings
from scrapvision.audit.tables import decisions, reviews, tally_minutes

_DAY_S = 86_400.0
_CHUNK = 5_000  # rows deleted per transaction, so writers are never blocked for long
_HASHES_PER_QUERY = 500  # frame files checked against the decisions per query


@dataclass(slots=True)
class PruneResult:
    decisions: int = 0
    frames: int = 0
    rollups: int = 0


def prune(engine: Engine, frame_store: FrameStore, settings: AuditSettings,
          now: float | None = None) -> PruneResult:
    """Delete what the retention settings no longer keep; returns how much went."""
    now = time.time() if now is None else now
    result = PruneResult()
    unreviewed = ~exists().where(reviews.c.decision_id == decisions.c.id)
    if settings.max_age_days is not None:
        too_old = decisions.c.time < now - settings.max_age_days * _DAY_S
        _delete_decisions(engine, frame_store, unreviewed & too_old, result)
    if settings.max_rows is not None:
        with engine.connect() as connection:
            count = connection.scalar(select(func.count()).where(unreviewed)
                                      .select_from(decisions))
            excess = count - settings.max_rows
            cutoff_id = None
            if excess > 0:
                cutoff_id = connection.scalar(
                    select(decisions.c.id).where(unreviewed).order_by(decisions.c.id)
                    .offset(excess - 1).limit(1))
        if cutoff_id is not None:
            _delete_decisions(engine, frame_store, unreviewed & (decisions.c.id <= cutoff_id),
                              result)
    _delete_orphan_frames(engine, frame_store, now - settings.orphan_frame_days * _DAY_S,
                          result)
    with engine.begin() as connection:
        result.rollups = connection.execute(delete(tally_minutes).where(
            tally_minutes.c.minute < now - settings.rollup_max_age_days * _DAY_S)).rowcount
    return result


def _delete_decisions(engine: Engine, frame_store: FrameStore, condition,
                      result: PruneResult) -> None:
    while True:
        with engine.begin() as connection:
            rows = connection.execute(select(decisions.c.id, decisions.c.frame_hash)
                                      .where(condition).limit(_CHUNK)).all()
            if not rows:
                return
            # the condition again: a decision reviewed since the SELECT is kept, review and all
            deleted = connection.execute(delete(decisions).where(
                decisions.c.id.in_([r.id for r in rows]) & condition)).rowcount
            hashes = {r.frame_hash for r in rows if r.frame_hash}
            still_used = set(connection.scalars(select(decisions.c.frame_hash).where(
                decisions.c.frame_hash.in_(hashes)).distinct())) if hashes else set()
        result.decisions += deleted
        for frame_hash in hashes - still_used:
            frame_store.path(frame_hash).unlink(missing_ok=True)
            result.frames += 1


def _delete_orphan_frames(engine: Engine, frame_store: FrameStore, cutoff: float,
                          result: PruneResult) -> None:
    unused = frame_store.unused_since(cutoff)
    while chunk := dict(itertools.islice(unused, _HASHES_PER_QUERY)):
        with engine.connect() as connection:
            referred = set(connection.scalars(select(decisions.c.frame_hash).where(
                decisions.c.frame_hash.in_(chunk)).distinct()))
        for frame_hash in chunk.keys() - referred:
            chunk[frame_hash].unlink(missing_ok=True)
            result.frames += 1
