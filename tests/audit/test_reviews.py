"""Purity semantics and shift boundaries, independent of the HTTP layer."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from scrapvision.audit import queries, reviews
from scrapvision.audit.settings import AuditSettings

T0 = datetime(2026, 11, 22, 7, 0, tzinfo=UTC).timestamp()


def test_a_bin_receiving_several_classes_is_pure_for_each_of_them(store, make_decision):
    """copper and brass both go to the 'metals' bin: copper relabelled brass is still pure."""
    for minute, (decided, truth) in enumerate([("copper", "brass"), ("copper", "copper"),
                                                ("brass", "brass"), ("brass", "plastic")]):
        store.submit(make_decision(time=T0 + 60 * minute, frame_id=f"{decided}-{truth}",
                                   class_name=decided, bin="metals"))
    assert store.flush()
    for item in queries.page(store.engine, queries.DecisionFilter())["items"]:
        decided, truth = item["frame_id"].split("-")
        if decided == truth:
            reviews.add_review(store.engine, item["id"], "qa", "confirm")
        else:
            reviews.add_review(store.engine, item["id"], "qa", "relabel", truth)
    result = reviews.purity(store.engine, store.settings, line="line1")
    (metals,) = result["bins"]
    assert (metals["bin"], metals["n"], metals["correct"]) == ("metals", 4, 3)
    (accuracy,) = result["accuracy"]
    assert (accuracy["n"], accuracy["correct"]) == (4, 2)


@pytest.mark.parametrize("moment, expected", [
    ("2026-11-22T05:59:00+00:00", "2026-11-21T22:00:00+00:00"),
    ("2026-11-22T06:00:00+00:00", "2026-11-22T06:00:00+00:00"),
    ("2026-11-22T13:59:59+00:00", "2026-11-22T06:00:00+00:00"),
    ("2026-11-22T23:30:00+00:00", "2026-11-22T22:00:00+00:00"),
])
def test_shift_start_with_default_shifts(moment, expected):
    start = AuditSettings().shift_start(datetime.fromisoformat(moment))
    assert start.isoformat() == expected


def test_shift_start_in_a_local_time_zone():
    settings = AuditSettings(timezone="Europe/Berlin", shift_starts=["22:00", "06:00"])
    assert settings.shift_starts == ["06:00", "22:00"]
    # 05:30 UTC is 06:30 in Berlin (CET, UTC+1): the 06:00 local shift, 05:00 UTC.
    start = settings.shift_start(datetime(2026, 11, 22, 5, 30, tzinfo=UTC))
    assert start == datetime(2026, 11, 22, 5, 0, tzinfo=UTC)


@pytest.mark.parametrize("settings", [{"shift_starts": []}, {"shift_starts": ["6:00"]},
                                      {"shift_starts": ["24:00"]}, {"timezone": "Mars/Base"},
                                      {"commit_interval_ms": 500}])
def test_bad_settings_are_refused(settings):
    with pytest.raises(ValueError):
        AuditSettings(**settings)
