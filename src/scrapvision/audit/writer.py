"""Group commit: a bounded in-memory buffer drained by one background thread.

The request path only appends to the buffer (`offer` never blocks on I/O and never
raises); the thread writes whatever accumulated every `interval_s` in one transaction, so
one fsync covers hundreds of decisions. While the database is away the buffer keeps
filling up to its bound and the thread retries with exponential backoff; what does not
fit is counted, never silently lost.

Every count is also a Prometheus counter (`scrapvision.service.metrics`, summed over worker
processes): incremented once per group commit, or per item only on the paths that lose one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import islice
from typing import Generic, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from scrapvision.service import metrics

log = logging.getLogger(__name__)
_WRITTEN = metrics.AUDIT_RECORDS.labels("written")
_DROPPED_FULL = metrics.AUDIT_RECORDS.labels("dropped_full")
_REJECTED = metrics.AUDIT_RECORDS.labels("rejected")
_LOST_AT_CLOSE = metrics.AUDIT_RECORDS.labels("lost_at_close")
CLOSE_TIMEOUT_S = 10.0  # a write hung on the database must not hold shutdown for ever

Item = TypeVar("Item")


@dataclass(slots=True)
class WriterStats:
    buffered: int = 0
    written: int = 0
    dropped_full: int = 0  # refused because the buffer was at its bound
    rejected: int = 0  # rows the database refused on their own (bad data), skipped
    lost_at_close: int = 0  # still buffered when close() gave up on an unreachable database
    commits: int = 0
    write_errors: int = 0
    last_error: str | None = None
    last_commit_time: float | None = None


class GroupCommitWriter(Generic[Item]):
    """Drains a bounded buffer through `write(batch)` every `interval_s` seconds.

    `write` must write the whole batch in one transaction or raise. A batch leaves the
    buffer only after it is written, so a failed batch is retried in order. If `write`
    fails for a reason other than the database being unreachable, the batch is retried
    item by item and the items that still fail are counted as rejected, so one bad row
    cannot block the rest. `tick` runs in a thread of its own after every drain and at
    least every `interval_s` (so the gauges move on while a write hangs on the database),
    and after `close`: where the owner refreshes its gauges.
    """

    def __init__(
        self,
        write: Callable[[list[Item]], None],
        *,
        interval_s: float,
        max_buffered: int,
        max_batch: int,
        retry_max_s: float,
        name: str = "audit-writer",
        tick: Callable[[], None] | None = None,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
    ) -> None:
        self._write = write
        self._tick = tick or (lambda: None)
        self.interval_s = interval_s
        self.max_buffered = max_buffered
        self.max_batch = max_batch
        self.retry_max_s = retry_max_s
        self.close_timeout_s = close_timeout_s
        self._buffer: deque[Item] = deque()
        self._lock = threading.Lock()
        self._drain_lock = threading.Lock()  # one drainer at a time: no batch written twice
        self._stop = threading.Event()
        self._tick_now = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._ticker = threading.Thread(target=self._tick_until_stopped, name=f"{name}-tick",
                                        daemon=True)
        self._stats = WriterStats()
        self._failures = 0

    def offer(self, item: Item) -> bool:
        """Append `item` for the next commit; False (and counted) when the buffer is full."""
        with self._lock:
            if len(self._buffer) < self.max_buffered:
                self._buffer.append(item)
                return True
            self._stats.dropped_full += 1
        _DROPPED_FULL.inc()
        return False

    def start(self) -> None:
        self._thread.start()
        self._ticker.start()

    def close(self) -> None:
        """Stop after writing everything buffered (one last try if it fails). The thread's
        last drain is given `close_timeout_s`; if the database hangs that long, what is
        still buffered counts as lost rather than holding shutdown."""
        self._stop.set()
        self._tick_now.set()
        if self._ticker.is_alive():
            self._ticker.join()
        if self._thread.is_alive():
            self._thread.join(self.close_timeout_s)
            written = not self._thread.is_alive() and not self._buffer
        else:
            written = self.drain()
        if not written:
            with self._lock:
                lost = len(self._buffer)
                self._stats.lost_at_close += lost
                log.error("audit: %d buffered decisions could not be written at close: %s",
                          lost, self._stats.last_error or "the database did not answer")
                self._buffer.clear()
            _LOST_AT_CLOSE.inc(lost)
        self._tick()

    def stats(self) -> WriterStats:
        with self._lock:
            self._stats.buffered = len(self._buffer)
            return replace(self._stats)

    def drain(self) -> bool:
        """Write batches until the buffer is empty; False when the database refused."""
        with self._drain_lock:
            while True:
                with self._lock:
                    batch = list(islice(self._buffer, self.max_batch))
                if not batch:
                    return True
                if not self._write_batch(batch):
                    return False
                with self._lock:  # close() may have given up on it meanwhile
                    for _ in range(min(len(batch), len(self._buffer))):
                        self._buffer.popleft()

    def _run(self) -> None:
        retry_at = 0.0
        while not self._stop.wait(self.interval_s):
            now = time.monotonic()
            if now >= retry_at:
                retry_at = 0.0 if self.drain() else now + self._backoff() - self.interval_s
                self._tick_now.set()
        self.drain()  # the last one, which close() waits for

    def _tick_until_stopped(self) -> None:
        while True:
            self._tick_now.wait(self.interval_s)
            self._tick_now.clear()
            if self._stop.is_set():
                return
            self._tick()

    def _backoff(self) -> float:
        return min(self.retry_max_s, self.interval_s * 2 ** min(self._failures, 16))

    def _write_batch(self, batch: list[Item]) -> bool:
        try:
            self._write(batch)
        except DBAPIError as error:
            if database_unreachable(error):
                self._record_failure(error)
                return False
            self._write_one_by_one(batch)
        except Exception:  # noqa: BLE001 - a bug in one batch must not stop the writer
            log.exception("audit: batch write failed, retrying row by row")
            self._write_one_by_one(batch)
        else:
            self._record_success(len(batch))
        return True

    def _write_one_by_one(self, batch: list[Item]) -> None:
        for item in batch:
            try:
                self._write([item])
            except Exception as error:  # noqa: BLE001 - counted and logged, then skipped
                with self._lock:
                    self._stats.rejected += 1
                    self._stats.last_error = repr(error)
                _REJECTED.inc()
                log.warning("audit: decision refused by the database, skipped: %r", error)
            else:
                self._record_success(1)

    def _record_success(self, count: int) -> None:
        if self._failures:
            log.info("audit: database reachable again after %d failed writes", self._failures)
        self._failures = 0
        now = time.time()
        with self._lock:
            self._stats.written += count
            self._stats.commits += 1
            self._stats.last_commit_time = now
        _WRITTEN.inc(count)
        metrics.AUDIT_COMMITS.inc()
        metrics.AUDIT_LAST_COMMIT.set(now)

    def _record_failure(self, error: Exception) -> None:
        if not self._failures:
            log.error("audit: database unreachable, buffering decisions: %s", error)
        self._failures += 1
        with self._lock:
            self._stats.write_errors += 1
            self._stats.last_error = repr(error)
        metrics.AUDIT_WRITE_ERRORS.inc()

def database_unreachable(error: DBAPIError) -> bool:
    """True when the database (not the data) is the problem: worth retrying the batch."""
    return error.connection_invalidated or isinstance(error, (OperationalError, InterfaceError))
