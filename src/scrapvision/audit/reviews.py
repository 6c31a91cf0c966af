"""Human reviews and what they tell: audited accuracy and bin purity with their uncertainty.

A review is appended, never updated, and the decision it judges is never touched; the
latest review of a decision is its verified label. Purity of a bin is the share of
reviewed items ejected into it whose verified label is a class the bin receives on that
line (learned from what the line actually ejected there). The reviewed items are a
sample: low-margin and recirculated frames are over-represented, so these figures lean
pessimistic; the sample size and a Wilson 95% interval are always reported with them.
"""

from __future__ import annotations

import math
import re
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import Engine, insert, select

from scrapvision.audit.frames import FrameReason
from scrapvision.audit.queries import (
    DecisionFilter,
    apply_filter,
    latest_review,
    with_latest_review,
)
from scrapvision.audit.settings import AuditSettings
from scrapvision.audit.tables import decisions, reviews, tally_minutes

Verdict = Literal["confirm", "relabel"]
# A label becomes a folder name in exported data sets: no separators, no leading dot.
LABEL_PATTERN = r"^\w[\w .()+-]{0,63}$"
Z_95 = 1.959964


class ReviewError(ValueError):
    """The review contradicts the decision (e.g. confirming a class it never had)."""


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial share: sane at 0, 1 and small n (unlike Wald)."""
    if n <= 0:
        return 0.0, 1.0
    share = successes / n
    centre = share + z * z / (2 * n)
    spread = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    denominator = 1 + z * z / n
    return max(0.0, (centre - spread) / denominator), min(1.0, (centre + spread) / denominator)


def add_review(engine: Engine, decision_id: int, reviewer: str, verdict: Verdict,
               label: str | None = None) -> dict[str, Any]:
    """Record a review; LookupError for an unknown decision, ReviewError when inconsistent.

    "confirm" verifies the decided class (a label, if given, must equal it); "relabel"
    names the class the item really is and must differ from the decided one.
    """
    with engine.begin() as connection:
        decision = connection.execute(select(decisions.c.class_name)
                                      .where(decisions.c.id == decision_id)).first()
        if decision is None:
            raise LookupError(f"no decision {decision_id}")
        decided = decision.class_name
        if verdict == "confirm":
            if decided is None:
                raise ReviewError("this decision has no class to confirm (late or overload); "
                                  "relabel it with the class the item is")
            if label is not None and label != decided:
                raise ReviewError(f"confirm keeps the decided class '{decided}'; "
                                  f"use relabel for '{label}'")
            label = decided
        elif label is None:
            raise ReviewError("relabel needs the label the item really is")
        elif not re.fullmatch(LABEL_PATTERN, label):
            raise ReviewError(f"label '{label}' is not a valid class name "
                              "(letters, digits, space, _ . ( ) + -; no leading dot)")
        elif label == decided:
            raise ReviewError(f"the decision already says '{label}'; use confirm")
        review = {"decision_id": decision_id, "time": time.time(), "reviewer": reviewer,
                  "verdict": verdict, "label": label}
        review_id = connection.execute(insert(reviews).values(review)).inserted_primary_key[0]
    return {"id": review_id, **review}


def history(engine: Engine, decision_id: int) -> list[dict[str, Any]]:
    """Every review of a decision, oldest first."""
    with engine.connect() as connection:
        rows = connection.execute(select(reviews).where(reviews.c.decision_id == decision_id)
                                  .order_by(reviews.c.id)).all()
    return [dict(row._mapping) for row in rows]


def _bin_classes(engine: Engine, line: str | None) -> dict[tuple[str, str], set[str]]:
    """(line, bin) -> classes the line ejected into that bin."""
    query = (select(tally_minutes.c.line, tally_minutes.c.bin, tally_minutes.c.class_name)
             .where(tally_minutes.c.action == "eject").distinct())
    if line is not None:
        query = query.where(tally_minutes.c.line == line)
    mapping: dict[tuple[str, str], set[str]] = defaultdict(set)
    with engine.connect() as connection:
        for row_line, bin_name, class_name in connection.execute(query):
            mapping[(row_line, bin_name)].add(class_name)
    return mapping


def _share(correct: int, n: int) -> dict[str, Any]:
    low, high = wilson_interval(correct, n)
    return {"n": n, "correct": correct, "share": correct / n if n else None,
            "ci_low": low, "ci_high": high}


def purity(engine: Engine, settings: AuditSettings, line: str | None = None,
           since: datetime | None = None, until: datetime | None = None,
           frame_reason: FrameReason | None = None) -> dict[str, Any]:
    """Audited accuracy per line and shift, and estimated purity per line, shift and bin.

    `frame_reason="random"` restricts both to the randomly sampled frames: fewer reviews,
    but an unbiased estimate.
    """
    where = DecisionFilter(line=line, since=since, until=until, reviewed=True,
                           frame_reason=frame_reason)
    query = apply_filter(with_latest_review([
        decisions.c.line, decisions.c.time, decisions.c.action, decisions.c.class_name,
        decisions.c.bin, latest_review.c.label]), where)
    bin_classes = _bin_classes(engine, line)
    accuracy: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    bins: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    with engine.connect() as connection:
        for row in connection.execute(query):
            shift = settings.shift_start(datetime.fromtimestamp(row.time, UTC)).isoformat()
            if row.class_name is not None:
                tally = accuracy[(row.line, shift)]
                tally[0] += row.label == row.class_name
                tally[1] += 1
            if row.action == "eject" and row.bin:
                tally = bins[(row.line, shift, row.bin)]
                tally[0] += row.label in bin_classes[(row.line, row.bin)]
                tally[1] += 1
    return {
        "confidence_level": 0.95,
        "accuracy": [{"line": key[0], "shift": key[1], **_share(*counts)}
                     for key, counts in sorted(accuracy.items())],
        "bins": [{"line": key[0], "shift": key[1], "bin": key[2], **_share(*counts)}
                 for key, counts in sorted(bins.items())],
    }
