"""AuditStore behaviour, run against SQLite and PostgreSQL (see conftest.audit_url)."""

from __future__ import annotations

from datetime import UTC, datetime

import cv2
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, func, inspect, select
from tinymodel import colour_frame

from scrapvision.audit.settings import AuditSettings
from scrapvision.audit.store import AuditStore
from scrapvision.audit.tables import decisions, metadata

T0 = datetime(2026, 11, 22, 6, 0, tzinfo=UTC).timestamp()
UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2"  # port 1: closed


def _rows(store: AuditStore) -> list:
    with store.engine.connect() as connection:
        return connection.execute(select(decisions).order_by(decisions.c.id)).all()


def test_start_migrates_and_is_idempotent(audit_settings):
    AuditStore(audit_settings).start().close()
    store = AuditStore(audit_settings).start()  # second start: already at head
    tables = set(inspect(store.engine).get_table_names())
    store.close()
    assert {"audit_decisions", "audit_reviews", "audit_tally_minutes", "alembic_version"} <= tables


def test_close_flushes_every_submitted_decision(audit_settings, make_decision):
    store = AuditStore(audit_settings).start()
    for i in range(250):
        store.submit(make_decision(time=T0 + i, top_k=[("red", 0.7), ("blue", 0.3)]))
    store.close()
    rows = _rows(store)
    assert len(rows) == 250
    assert [row.frame_id for row in rows] == [f"frame-{i}" for i in range(250)]
    assert rows[0].top_k == [["red", 0.7], ["blue", 0.3]]
    assert store.stats()["written"] == 250 and store.stats()["buffered"] == 0


def test_every_record_field_is_stored(store, make_decision):
    record = make_decision(time=T0, item_id="item-7", capture_time=T0 - 0.05,
                           fire_time=T0 + 0.03, belt_position=1234.5, in_time=False,
                           latency_ms=12.5, action="recirculate", bin="recirc",
                           class_name="green", confidence=0.51, margin=0.02)
    store.submit(record)
    store.close()
    row = _rows(store)[0]._mapping
    for name, value in record.to_dict().items():
        expected = [list(pair) for pair in value] if name == "top_k" else value
        assert row[name] == expected, name


def test_buffer_bound_counts_dropped_records(audit_settings, make_decision):
    settings = audit_settings.model_copy(update={"max_buffered": 5})
    store = AuditStore(settings)  # not started: nothing drains the buffer yet
    for i in range(8):
        store.submit(make_decision(time=T0 + i))
    assert store.stats()["buffered"] == 5
    assert store.stats()["dropped_full"] == 3
    store.start()
    store.close()
    assert len(_rows(store)) == 5
    assert store.stats()["written"] == 5


def test_tallies_count_per_class_bin_action(store, make_decision):
    store.submit(make_decision(time=T0, class_name="red", bin="bin-red"))
    store.submit(make_decision(time=T0 + 1, class_name="red", bin="bin-red", in_time=False))
    store.submit(make_decision(time=T0 + 2, class_name="blue", action="recirculate",
                               bin="recirc"))
    store.submit(make_decision(time=T0 + 3, class_name="green", action="pass", bin=None))
    store.submit(make_decision(time=T0 + 4, action="late", class_name=None, bin=None,
                               confidence=None, margin=None, top_k=[]))
    store.submit(make_decision(time=T0 + 61, action="overload", class_name=None, bin=None,
                               confidence=None, margin=None, top_k=[]))
    store.submit(make_decision(time=T0 + 5, line="other"))
    store.close()
    tallies = store.tallies("line1")
    assert tallies["total"] == 6
    assert tallies["per_class"] == {"red": 2, "blue": 1, "green": 1}
    assert tallies["per_bin"] == {"bin-red": 2, "recirc": 1}
    assert tallies["per_action"]["eject"] == 2 and tallies["per_action"]["pass"] == 1
    assert tallies["late"] == 1 and tallies["overload"] == 1
    assert tallies["missed_deadline"] == 1
    assert tallies["mean_latency_ms"] == 4.0
    assert tallies["first_time"].timestamp() == T0
    assert tallies["last_time"].timestamp() == T0 + 61
    second_minute = store.tallies("line1", since=datetime.fromtimestamp(T0 + 60, UTC))
    assert second_minute["total"] == 1 and second_minute["overload"] == 1
    first_minute = store.tallies("line1", until=datetime.fromtimestamp(T0 + 60, UTC))
    assert first_minute["total"] == 5
    assert store.tallies("nowhere")["total"] == 0


def test_tallies_add_up_across_two_stores_on_one_database(audit_settings, make_decision):
    first = AuditStore(audit_settings).start()
    second = AuditStore(audit_settings).start()
    for i in range(30):  # the same minutes and keys from both: the upsert must add up
        first.submit(make_decision(time=T0 + i, frame_id=f"a{i}"))
        second.submit(make_decision(time=T0 + i, frame_id=f"b{i}"))
    first.close()
    second.close()
    restarted = AuditStore(audit_settings).start()
    tallies = restarted.tallies("line1")
    restarted.close()
    assert tallies["total"] == 60
    assert tallies["per_class"] == {"red": 60}
    assert len(_rows(restarted)) == 60


def test_sampled_frame_is_stored_downscaled_and_referenced(store, make_decision):
    store.submit(make_decision(time=T0, margin=0.05), colour_frame("red", 1280, 720))
    store.submit(make_decision(time=T0 + 1, margin=0.05), b"not an image")
    store.close()
    kept, broken = _rows(store)
    assert kept.frame_reason == "low_margin"
    path = store.frame_store.path(kept.frame_hash)
    assert cv2.imread(str(path)).shape == (180, 320, 3)
    assert broken.frame_hash is None and broken.frame_reason is None
    assert store.stats()["frames"] == {"kept": 1, "failed": 1, "dropped_pending": 0,
                                       "pending": 0, "skipped_by_cap": 0}


def test_frames_beyond_pending_bound_are_dropped_not_the_records(audit_settings,
                                                                  make_decision):
    settings = audit_settings.model_copy(update={"frames": audit_settings.frames.model_copy(
        update={"max_pending": 2})})
    store = AuditStore(settings)
    for i in range(4):
        store.submit(make_decision(time=T0 + i, margin=0.0), colour_frame("blue"))
    store.start()
    store.close()
    rows = _rows(store)
    assert len(rows) == 4
    assert sum(row.frame_hash is not None for row in rows) == 2
    assert store.stats()["frames"]["dropped_pending"] == 2


def test_overlong_client_ids_are_truncated_not_rejected(store, make_decision):
    store.submit(make_decision(time=T0, frame_id="x" * 500))
    store.close()
    assert _rows(store)[0].frame_id == "x" * 128
    assert store.stats()["rejected"] == 0


def test_default_sqlite_url_creates_its_folder(tmp_path, make_decision):
    settings = AuditSettings(url=f"sqlite:///{tmp_path}/new/dir/audit.db",
                             frames_dir=tmp_path / "frames")
    with AuditStore(settings) as store:
        store.submit(make_decision())
    with store.engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(decisions)) == 1
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_unreachable_database_buffers_then_catches_up(audit_settings, make_decision):
    store = AuditStore(audit_settings)  # writer thread not started: flushes are explicit
    reachable = store.engine
    store.engine = create_engine(UNREACHABLE)
    for i in range(20):
        store.submit(make_decision(time=T0 + i))
    assert store.flush() is False
    stats = store.stats()
    assert stats["buffered"] == 20 and stats["write_errors"] == 1 and stats["written"] == 0
    assert "OperationalError" in stats["last_error"]
    store.engine = reachable
    assert store.flush() is True  # migrates first: the database was never reached before
    assert len(_rows(store)) == 20 and store.tallies("line1")["total"] == 20
    store.close()


def test_start_with_the_database_down_does_not_fail(audit_settings, make_decision):
    store = AuditStore(audit_settings.model_copy(update={"url": UNREACHABLE}))
    store.start()  # logs, buffers, and retries in the writer thread
    store.submit(make_decision())
    store.close()
    assert store.stats()["lost_at_close"] == 1


def test_migrations_match_the_table_definitions(store):
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        assert compare_metadata(context, metadata) == []


def test_a_sqlite_file_deleted_under_the_store_is_recreated_and_written(tmp_path,
                                                                        make_decision):
    database = tmp_path / "audit.db"
    store = AuditStore(AuditSettings(url=f"sqlite:///{database}",
                                     frames_dir=tmp_path / "frames")).start()
    try:
        store.submit(make_decision(frame_id="before"))
        assert store.flush()
        for path in tmp_path.glob("audit.db*"):
            path.unlink()  # an operator cleaning up, or a bad backup script
        store.submit(make_decision(frame_id="after"))
        assert store.flush()
    finally:
        store.close()
    engine = create_engine(f"sqlite:///{database}")
    with engine.connect() as connection:
        assert connection.scalars(select(decisions.c.frame_id)).all() == ["after"]
    engine.dispose()
