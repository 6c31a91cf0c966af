"""Group-commit writer: batching, retry while the database is away, poison rows."""

from __future__ import annotations

import threading
import time

from sqlalchemy.exc import IntegrityError, OperationalError

from scrapvision.audit.writer import GroupCommitWriter


class FlakyDatabase:
    """Records the batches it commits; fails while `down` or for items in `refuse`."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.down = False
        self.refuse: set[int] = set()

    def write(self, batch: list[int]) -> None:
        if self.down:
            raise OperationalError("INSERT", {}, Exception("connection refused"))
        if self.refuse & set(batch):
            raise IntegrityError("INSERT", {}, Exception("value too long"))
        self.batches.append(list(batch))


def _writer(database: FlakyDatabase, **options) -> GroupCommitWriter[int]:
    settings = dict(interval_s=0.05, max_buffered=100, max_batch=10, retry_max_s=0.2)
    settings.update(options)
    return GroupCommitWriter(database.write, **settings)


def test_buffered_items_are_committed_in_groups_of_at_most_max_batch():
    database = FlakyDatabase()
    writer = _writer(database)
    for item in range(25):
        assert writer.offer(item)
    assert writer.drain()
    assert database.batches == [list(range(10)), list(range(10, 20)), list(range(20, 25))]
    stats = writer.stats()
    assert (stats.written, stats.commits, stats.buffered) == (25, 3, 0)


def test_full_buffer_refuses_and_counts():
    writer = _writer(FlakyDatabase(), max_buffered=3)
    assert [writer.offer(item) for item in range(5)] == [True, True, True, False, False]
    assert writer.stats().dropped_full == 2
    assert writer.stats().buffered == 3


def test_unreachable_database_keeps_items_in_order_until_it_returns():
    database = FlakyDatabase()
    writer = _writer(database)
    database.down = True
    for item in range(5):
        writer.offer(item)
    assert not writer.drain()
    assert writer.stats().buffered == 5 and writer.stats().write_errors == 1
    writer.offer(5)
    database.down = False
    assert writer.drain()
    assert database.batches == [[0, 1, 2, 3, 4, 5]]
    assert writer.stats().written == 6


def test_a_row_the_database_refuses_is_skipped_and_counted():
    database = FlakyDatabase()
    database.refuse = {2}
    writer = _writer(database)
    for item in range(4):
        writer.offer(item)
    assert writer.drain()
    assert database.batches == [[0], [1], [3]]
    stats = writer.stats()
    assert stats.rejected == 1 and stats.written == 3 and "value too long" in stats.last_error


def test_close_writes_everything_buffered_by_the_running_thread():
    database = FlakyDatabase()
    writer = _writer(database, interval_s=0.2)
    writer.start()
    for item in range(50):
        writer.offer(item)
    writer.close()
    assert [item for batch in database.batches for item in batch] == list(range(50))


def test_close_counts_what_an_unreachable_database_lost():
    database = FlakyDatabase()
    database.down = True
    writer = _writer(database)
    for item in range(7):
        writer.offer(item)
    writer.close()
    assert writer.stats().lost_at_close == 7 and writer.stats().buffered == 0


class HangingDatabase:
    """A database that takes the connection and then never answers, until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def write(self, batch: list[int]) -> None:
        self.entered.set()
        self.release.wait()


def test_the_tick_goes_on_while_a_write_hangs_and_close_gives_up_in_time():
    database = HangingDatabase()
    ticks = []
    writer = GroupCommitWriter(database.write, interval_s=0.02, max_buffered=100, max_batch=10,
                               retry_max_s=0.2, tick=lambda: ticks.append(writer.stats().buffered),
                               close_timeout_s=0.3)
    writer.start()
    writer.offer(1)
    assert database.entered.wait(5)
    for item in range(2, 6):
        writer.offer(item)
    time.sleep(0.2)
    assert ticks and ticks[-1] == 5  # the gauges see the backlog grow while the write hangs
    started = time.monotonic()
    writer.close()
    assert time.monotonic() - started < 2
    assert writer.stats().lost_at_close == 5
    database.release.set()  # the hung write returns late: nothing breaks
