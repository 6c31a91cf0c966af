"""Reliability fixtures: a tally of how many generated cases each fuzz test ran.

The counts are printed at the end of the run ("reliability cases: ..."): the README's
Reliability figures quote them, so they must come from the run, not from settings.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

SLOW = os.environ.get("SCRAPVISION_SLOW") == "1"
CASES: Counter[str] = Counter()


def examples(fast: int, slow: int) -> int:
    """Hypothesis/schemathesis `max_examples`: a quick default run, many more with SCRAPVISION_SLOW=1."""
    return slow if SLOW else fast


@pytest.fixture
def count_case(request: pytest.FixtureRequest):
    """Call once per generated case, optionally with its outcome; tallied under the test's name."""
    name = request.node.originalname

    def count(outcome: str | None = None) -> None:
        CASES[name] += 1
        if outcome:
            CASES[f"{name} / {outcome}"] += 1

    return count


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if CASES:
        terminalreporter.write_sep("-", "reliability cases")
        for name, number in sorted(CASES.items()):
            terminalreporter.write_line(f"{name}: {number} cases")
