"""kill -9 of a process writing the audit store: the store reopens cleanly and keeps
every decision older than the commit window (the documented durability guarantee)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from sqlalchemy import func, select

from scrapvision.audit.store import AuditStore
from scrapvision.audit.tables import decisions

# The child submits decisions forever and reports every 10th sequence number it queued.
WRITER = textwrap.dedent("""
    import sys, time
    from scrapvision.audit.settings import AuditSettings
    from scrapvision.audit.store import AuditStore
    from scrapvision.records import DecisionRecord

    store = AuditStore(AuditSettings(url=sys.argv[1], frames_dir=sys.argv[2])).start()
    print("started", flush=True)
    seq = 0
    while True:
        store.submit(DecisionRecord(time=time.time(), line="crash", frame_id=str(seq),
                                    model_name="tiny", model_version="v1", action="eject",
                                    in_time=True, latency_ms=1.0, class_name="red", bin="b"))
        if seq % 10 == 0:
            print(seq, flush=True)
        seq += 1
        time.sleep(0.001)
""")
# Far beyond the <= 200 ms commit window, so a loaded machine cannot make this flaky.
MARGIN_S = 2.0


def test_kill_9_loses_at_most_the_last_commit_window(audit_settings):
    child = subprocess.Popen([sys.executable, "-c", WRITER, audit_settings.url,
                              str(audit_settings.frames_dir)],
                             stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert child.stdout.readline().strip() == "started"
        durable = -1
        while durable < 200:
            durable = int(child.stdout.readline())
        time.sleep(MARGIN_S)  # everything up to `durable` is now older than the window
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL

    store = AuditStore(audit_settings).start()  # reopens (and re-runs migrations) cleanly
    try:
        with store.engine.connect() as connection:
            frame_ids = set(connection.scalars(select(decisions.c.frame_id)))
            if store.engine.dialect.name == "sqlite":
                assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
            stored = connection.scalar(select(func.count()).select_from(decisions))
        assert {str(seq) for seq in range(durable + 1)} <= frame_ids
        assert store.tallies("crash")["total"] == stored  # rollups committed with the rows
    finally:
        store.close()
