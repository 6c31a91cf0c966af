"""The audit store: every decision recorded off the request path, tallies that add up.

`submit` appends to a bounded buffer and returns; the group-commit writer thread turns
sampled frames into review JPEGs, inserts the decisions and upserts the per-minute tally
rollups in the same transaction, so tallies always match the stored decisions, survive
restarts, and add up across every service process that writes the same database.

Durability: a decision is on disk once its group commit ran, at most
`commit_interval_ms` (<= 200 ms) after `submit`; `close()` writes everything buffered.
After a hard kill only the decisions of the last commit window are lost; SQLite (WAL)
and PostgreSQL both reopen cleanly because a transaction is either in or out.

Counters: `stats()` is this store's; the same counts go to Prometheus
(`scrapvision.service.metrics`), and `all_workers_stats()` reads them back summed over the
service's worker processes, as `/metrics` shows them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Dialect, Engine, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from scrapvision.audit import retention
from scrapvision.audit.db import make_engine, migrate, sqlite_file
from scrapvision.audit.frames import FrameSampler, FrameStore
from scrapvision.audit.settings import AuditSettings
from scrapvision.audit.tables import decisions, tally_minutes
from scrapvision.audit.writer import GroupCommitWriter, database_unreachable
from scrapvision.decode import DecodeError
from scrapvision.records import DecisionRecord
from scrapvision.service import metrics

log = logging.getLogger(__name__)

_ROLLUP_KEY = ("line", "minute", "class_name", "bin", "action")
_FRAMES = {outcome: metrics.AUDIT_FRAMES.labels(outcome)
           for outcome in metrics.AUDIT_FRAME_OUTCOMES}


@dataclass(slots=True)
class Pending:
    """A submitted decision waiting for its group commit (and maybe its review frame)."""

    record: DecisionRecord
    frame: bytes | None = None
    frame_reason: str | None = None
    frame_hash: str | None = None


class AuditStore:
    """Records decisions; see the module docstring for what is guaranteed."""

    def __init__(self, settings: AuditSettings | None = None) -> None:
        self.settings = settings or AuditSettings()
        self.engine: Engine = make_engine(self.settings.url)
        frames = self.settings.frames
        self.frame_store = FrameStore(self.settings.frames_dir, frames.longest_side,
                                      frames.jpeg_quality)
        self.sampler = FrameSampler(frames)
        self._upsert = _rollup_upsert(self.engine.dialect.name)
        self._insert = DecisionInsert(self.engine.dialect)
        self._writer: GroupCommitWriter[Pending] = GroupCommitWriter(
            self._write,
            interval_s=self.settings.commit_interval_ms / 1000,
            max_buffered=self.settings.max_buffered,
            max_batch=self.settings.max_batch,
            retry_max_s=self.settings.retry_max_s,
            tick=self._publish_gauges,
        )
        # Retention runs in its own thread so a long prune never stretches a commit window.
        self._retention = threading.Thread(target=self._prune_periodically,
                                           name="audit-retention", daemon=True)
        self._closing = threading.Event()
        self._frame_lock = threading.Lock()
        self._frames_pending = 0
        self._frame_counts = {"kept": 0, "dropped_pending": 0, "failed": 0}
        self._submit_errors = 0
        self._migrated = False
        self._sqlite_path = sqlite_file(self.engine)  # None: not SQLite, or in memory
        self._file_identity: tuple[int, int] | None = None  # of the SQLite file migrated
        self._started = False
        self._published_skips = 0  # sampler.skipped_by_cap already added to the counter

    def start(self) -> AuditStore:
        """Migrate the schema to the newest revision and start the writer thread.

        A database that cannot be reached yet does not stop the service: decisions are
        buffered and the writer migrates before its first successful write.
        """
        try:
            self._migrate()
        except DBAPIError as error:
            if not database_unreachable(error):
                raise
            log.error("audit: database unreachable at start, buffering decisions: %s", error)
        self._writer.start()
        self._retention.start()
        self._started = True
        metrics.AUDIT_STORES.inc()
        return self

    def _migrate(self) -> None:
        migrate(self.engine)
        self._migrated = True
        self._file_identity = _identity(self._sqlite_path)

    def _database_file_replaced(self) -> bool:
        """A SQLite file deleted or replaced under the service: its open connections would
        go on writing into the unlinked file, and every decision would be lost on exit."""
        return (self._sqlite_path is not None and self._migrated
                and _identity(self._sqlite_path) != self._file_identity)

    def close(self) -> None:
        """Write everything buffered, then release the database."""
        self._closing.set()
        if self._retention.is_alive():
            self._retention.join()
        self._writer.close()
        self.engine.dispose()
        if self._started:
            self._started = False
            metrics.AUDIT_STORES.dec()

    def flush(self) -> bool:
        """Write everything buffered now, without waiting for the next group commit.

        False when the database refused (the records stay buffered for the writer).
        """
        return self._writer.drain()

    def __enter__(self) -> AuditStore:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def submit(self, record: DecisionRecord, frame: bytes | None = None) -> None:
        """Queue `record` (and maybe a review copy of `frame`); never blocks, never raises."""
        try:
            pending = Pending(record)
            if frame is not None:
                pending.frame_reason = self.sampler.reason(record)
                if pending.frame_reason is not None and self._reserve_frame():
                    pending.frame = frame if isinstance(frame, bytes) else bytes(frame)
                else:
                    pending.frame_reason = None
            if not self._writer.offer(pending) and pending.frame is not None:
                self._release_frame()
        except Exception:  # noqa: BLE001 - auditing must never fail a sort decision
            self._submit_errors += 1
            metrics.AUDIT_SUBMIT_ERRORS.inc()
            log.exception("audit: could not queue a decision")

    def tallies(self, line: str, since: datetime | None = None,
                until: datetime | None = None) -> dict[str, Any]:
        """Counts for `line` from the per-minute rollups (every process, every restart).

        `since` and `until` select whole minutes: a minute is counted when its start lies
        in [since rounded down to the minute, until).
        """
        rows = select(
            tally_minutes.c.class_name, tally_minutes.c.bin, tally_minutes.c.action,
            func.sum(tally_minutes.c["count"]), func.sum(tally_minutes.c.missed_deadline),
            func.sum(tally_minutes.c.latency_ms_sum), func.min(tally_minutes.c.first_time),
            func.max(tally_minutes.c.last_time),
        ).where(tally_minutes.c.line == line).group_by(
            tally_minutes.c.class_name, tally_minutes.c.bin, tally_minutes.c.action)
        if since is not None:
            rows = rows.where(tally_minutes.c.minute >= _minute(since.timestamp()))
        if until is not None:
            rows = rows.where(tally_minutes.c.minute < until.timestamp())
        per_class: dict[str, int] = defaultdict(int)
        per_bin: dict[str, int] = defaultdict(int)
        per_action: dict[str, int] = defaultdict(int)
        total = missed = 0
        latency_sum = 0.0
        first: float | None = None
        last: float | None = None
        with self.engine.connect() as connection:
            for class_name, bin_name, action, count, missed_n, latency, low, high in (
                    connection.execute(rows)):
                count = int(count)  # PostgreSQL sums BIGINT as NUMERIC
                total += count
                missed += int(missed_n)
                latency_sum += float(latency)
                per_action[action] += count
                if class_name:
                    per_class[class_name] += count
                if bin_name:
                    per_bin[bin_name] += count
                first = low if first is None else min(first, low)
                last = high if last is None else max(last, high)
        decided = total - per_action["late"] - per_action["overload"]
        return {
            "line": line,
            "total": total,
            "per_class": dict(per_class),
            "per_bin": dict(per_bin),
            "per_action": dict(per_action),
            "late": per_action["late"],
            "overload": per_action["overload"],
            "missed_deadline": missed,
            "mean_latency_ms": latency_sum / decided if decided else None,
            "first_time": _datetime(first),
            "last_time": _datetime(last),
        }

    def stats(self) -> dict[str, Any]:
        """Buffer and write counters: what was kept, what was dropped and why."""
        with self._frame_lock:
            frames = dict(self._frame_counts, pending=self._frames_pending,
                          skipped_by_cap=self.sampler.skipped_by_cap)
        return {**asdict(self._writer.stats()), "submit_errors": self._submit_errors,
                "frames": frames}

    def all_workers_stats(self) -> dict[str, Any]:
        """`stats()` over every worker process of the service, plus what they cover.

        With several workers (Prometheus multiprocess mode) the counts are the totals
        `/metrics` shows, `buffered` as of each worker's last writer tick (at most
        `commit_interval_ms` old; a retry backoff does not delay it), `last_commit_time`
        the latest of any worker; `last_error` (text, not a number) and `this_worker` are the
        answering worker's own. With one worker (no multiprocess mode) its store is all
        there is.
        """
        own = self.stats()
        totals = metrics.audit_totals() if metrics.multiprocess_mode() else {"workers": 1}
        return {**own, **totals, "scope": "all workers",
                "this_worker": {"pid": os.getpid(), **own}}

    def prune(self) -> retention.PruneResult:
        """Apply the retention settings now (a background thread also does, periodically)."""
        return retention.prune(self.engine, self.frame_store, self.settings)

    def _prune_periodically(self) -> None:
        while not self._closing.wait(self.settings.prune_interval_s):
            try:
                result = self.prune()
            except Exception:  # noqa: BLE001 - retention failing must not stop the service
                log.exception("audit: retention failed; retrying in %.0f s",
                              self.settings.prune_interval_s)
            else:
                log.info("audit: retention pruned %s", result)

    def _publish_gauges(self) -> None:
        """Writer tick: refresh the gauges, and add the frames the sampler skipped (counted on
        the request path, where the cap can hit every frame) once per commit window."""
        metrics.AUDIT_BUFFERED.set(self._writer.stats().buffered)
        with self._frame_lock:
            metrics.AUDIT_FRAMES_PENDING.set(self._frames_pending)
        skips = self.sampler.skipped_by_cap
        if skips > self._published_skips:
            _FRAMES["skipped_by_cap"].inc(skips - self._published_skips)
            self._published_skips = skips

    def _reserve_frame(self) -> bool:
        with self._frame_lock:
            if self._frames_pending < self.settings.frames.max_pending:
                self._frames_pending += 1
                return True
            self._frame_counts["dropped_pending"] += 1
        _FRAMES["dropped_pending"].inc()
        return False

    def _release_frame(self) -> None:
        with self._frame_lock:
            self._frames_pending -= 1

    def _save_frames(self, batch: list[Pending]) -> None:
        """Downscale and store the sampled frames (in the writer thread, once per item)."""
        for pending in batch:
            if pending.frame is None:
                continue
            try:
                pending.frame_hash = self.frame_store.save(pending.frame)
                outcome = "kept"
            except (DecodeError, OSError) as error:
                pending.frame_reason = None
                outcome = "failed"
                log.warning("audit: review frame of %s not stored: %s",
                            pending.record.frame_id, error)
            pending.frame = None
            with self._frame_lock:
                self._frames_pending -= 1
                self._frame_counts[outcome] += 1
            _FRAMES[outcome].inc()

    def _write(self, batch: list[Pending]) -> None:
        if self._database_file_replaced():
            log.error("audit: %s was deleted or replaced; writing to a new database file there",
                      self._sqlite_path)
            self.engine.dispose()  # drop the connections to the old file
            self._migrated = False
        if not self._migrated:
            self._migrate()
        self._save_frames(batch)
        rollups = _rollups(batch)
        with self.engine.begin() as connection:
            connection.exec_driver_sql(self._insert.sql, self._insert.parameters(batch))
            connection.execute(self._upsert, rollups)


def _identity(path: os.PathLike | None) -> tuple[int, int] | None:
    """(device, inode) of a file, None when absent: what changes when it is replaced."""
    if path is None:
        return None
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


# (column, length) of the bounded string columns: a too-long id from a client is cut to
# fit rather than poison its whole batch
_BOUNDED = tuple((column.name, column.type.length) for column in decisions.columns
                 if getattr(column.type, "length", None))


class DecisionInsert:
    """The decisions INSERT as the driver's own SQL and parameters.

    SQLAlchemy's executemany passes every row through its bind processors: with them the
    writer thread took 26 us of CPU per row in 20-row commits (SQLite), without them 20,
    on cores that inference shares. The statement is still compiled by SQLAlchemy for the
    dialect, and the rows still go in one executemany.
    """

    def __init__(self, dialect: Dialect) -> None:
        columns = [column.name for column in decisions.columns if column.name != "id"]
        compiled = insert(decisions).compile(dialect=dialect, column_keys=columns)
        self.sql = str(compiled)
        self.positions = compiled.positiontup  # column order for "?" styles; None: named

    def parameters(self, batch: list[Pending]) -> list[Any]:
        rows = [_row(pending) for pending in batch]
        if self.positions is None:
            return rows
        return [tuple(row[name] for name in self.positions) for row in rows]


def _row(pending: Pending) -> dict[str, Any]:
    """The decision's column values as the driver takes them (`top_k` as JSON text)."""
    row = pending.record.to_dict()
    row["top_k"] = orjson.dumps([[name, float(p)] for name, p in row["top_k"]]).decode()
    for name, length in _BOUNDED:
        if isinstance(value := row.get(name), str) and len(value) > length:
            row[name] = value[:length]
    row["frame_hash"] = pending.frame_hash
    row["frame_reason"] = pending.frame_reason
    return row


def _rollups(batch: list[Pending]) -> list[dict[str, Any]]:
    """Per-minute tallies of a batch, sorted by key so concurrent upserts cannot deadlock."""
    tallies: dict[tuple, dict[str, Any]] = {}
    for pending in batch:
        record = pending.record
        key = (record.line[:64], _minute(record.time), (record.class_name or "")[:64],
               (record.bin or "")[:64], record.action)
        tally = tallies.get(key)
        if tally is None:
            tally = tallies[key] = dict(zip(_ROLLUP_KEY, key), count=0, missed_deadline=0,
                                        latency_ms_sum=0.0, first_time=record.time,
                                        last_time=record.time)
        tally["count"] += 1
        decided = record.action not in ("late", "overload")
        tally["missed_deadline"] += int(decided and not record.in_time)
        tally["latency_ms_sum"] += record.latency_ms if decided else 0.0
        tally["first_time"] = min(tally["first_time"], record.time)
        tally["last_time"] = max(tally["last_time"], record.time)
    return [tallies[key] for key in sorted(tallies)]


def _rollup_upsert(dialect: str):
    """INSERT .. ON CONFLICT DO UPDATE adding a batch's tallies to the stored ones."""
    if dialect == "postgresql":
        statement, lowest, highest = postgresql.insert(tally_minutes), func.least, func.greatest
    elif dialect == "sqlite":
        statement, lowest, highest = sqlite.insert(tally_minutes), func.min, func.max
    else:
        raise ValueError(f"audit store supports SQLite and PostgreSQL, not {dialect}")
    stored, new = tally_minutes.c, statement.excluded
    return statement.on_conflict_do_update(
        index_elements=list(_ROLLUP_KEY),
        set_={
            "count": stored["count"] + new["count"],
            "missed_deadline": stored.missed_deadline + new.missed_deadline,
            "latency_ms_sum": stored.latency_ms_sum + new.latency_ms_sum,
            "first_time": lowest(stored.first_time, new.first_time),
            "last_time": highest(stored.last_time, new.last_time),
        },
    )


def _minute(timestamp: float) -> int:
    return int(timestamp // 60) * 60


def _datetime(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC)
