"""The /qa page end to end in headless Chromium (Debian `chromium`, never downloaded).

Key prompt, filter, keyboard relabel and confirm; the correction is checked in the API
and in the exported data set, and a screenshot of the charts must not be blank.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
import uvicorn
from tinymodel import colour_frame

from scrapvision.audit import queries
from scrapvision.audit.export import export_dataset
from scrapvision.audit.settings import AuditSettings
from scrapvision.audit.store import AuditStore
from scrapvision.service.auth import hash_key
from scrapvision.settings import ApiKey

from .conftest import build_app

CHROMIUM = Path("/usr/bin/chromium")
QA_KEY = "qa-secret"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium "
                       "(apt-get install chromium)"),
]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def served(tmp_path, make_decision) -> Iterator[tuple[str, AuditStore]]:
    """A real uvicorn server with the audit routers, QA key required, seeded decisions."""
    store = AuditStore(AuditSettings(url=f"sqlite:///{tmp_path / 'audit.db'}",
                                     frames_dir=tmp_path / "frames")).start()
    start = time.time() - 3600
    for minute, (line, colour) in enumerate([("line1", "red"), ("line1", "green"),
                                             ("line1", "red"), ("line2", "blue"),
                                             ("line1", "blue")]):
        store.submit(make_decision(time=start + 60 * minute, line=line, class_name=colour,
                                   bin=f"bin-{colour}", frame_id=f"{line}-{minute}",
                                   margin=0.05),
                     colour_frame(colour, 640 + 16 * minute, 480))  # distinct pictures
    assert store.flush()
    app = build_app(store, [ApiKey(name="qa", role="qa", sha256=hash_key(QA_KEY))])
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", store
    server.should_exit = True
    thread.join()
    store.close()


@pytest.fixture
def page(served):
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"])
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        browser_page = context.new_page()
        errors: list[str] = []
        browser_page.on("pageerror", lambda error: errors.append(str(error)))
        yield browser_page
        browser.close()
        assert errors == []


def _latest_review(store: AuditStore, frame_id: str) -> dict | None:
    items = queries.page(store.engine, queries.DecisionFilter())["items"]
    return next(item["review"] for item in items if item["frame_id"] == frame_id)


def _open_with_key(page, base: str) -> None:
    """Open /qa: with no key yet the API answers 401 and the page asks for one."""
    page.goto(f"{base}/qa")
    page.wait_for_selector("#key-dialog[open]")
    page.fill("#key-input", QA_KEY)
    page.click("#key-save")
    page.wait_for_function("document.querySelectorAll('#decisions tbody tr').length === 5")


def test_qa_page_review_flow(served, page, tmp_path):
    base, store = served
    _open_with_key(page, base)

    page.select_option("#filter-line", "line1")
    page.select_option("#filter-class", "red")
    page.click("#apply")
    page.wait_for_function("document.querySelectorAll('#decisions tbody tr').length === 2")
    assert page.inner_text("#total").startswith("2 decisions")
    page.wait_for_selector("#frame-img[src^='blob:']")  # frame fetched with the key header

    page.fill("#reviewer", "qa-anna")
    page.click("h1")  # leave the input: shortcuts apply to the page
    selected = page.get_attribute("#decisions tbody tr.selected", "data-id")
    page.keyboard.press("1")  # line1 classes: blue, green, red -> 1 = blue
    assert page.input_value("#relabel-label") == "blue"
    page.keyboard.press("r")
    page.wait_for_selector(f"tr[data-id='{selected}'] td.review-relabel")
    page.keyboard.press("c")  # the page moved on to the next decision: confirm it
    page.wait_for_selector("td.review-confirm")

    relabelled = next(item for item in queries.page(
        store.engine, queries.DecisionFilter())["items"] if str(item["id"]) == selected)
    assert relabelled["class_name"] == "red"  # the decision itself is untouched
    assert relabelled["review"]["label"] == "blue"
    assert relabelled["review"]["reviewer"] == "qa-anna"
    assert _latest_review(store, "line1-0")["verdict"] == "confirm"

    result = export_dataset(store.engine, store.frame_store, tmp_path / "export")
    assert result.per_label == {"blue": 1, "red": 1}
    assert (tmp_path / "export" / "blue" / f"{relabelled['frame_hash']}.jpg").is_file()

    page.click("button.tab[data-tab='charts']")
    page.wait_for_selector("#throughput-chart svg")
    total = page.locator("#throughput-chart polyline[data-series='total']")
    now = datetime.now(UTC)
    expected = queries.throughput(store.engine, "line1", now - timedelta(hours=8), now,
                                  bucket_s=240)  # what the page asks for 8 hours
    points = [tuple(map(float, point.split(","))) for point in
              total.get_attribute("points").split()]
    assert len(points) in (120, 121)  # every 4-minute bucket of the 8 hours, empty ones too
    baseline = max(y for _, y in points)  # y grows downwards: 0 decisions
    busy = [y for _, y in points if y < baseline]
    assert len(busy) == len(expected["points"]) > 0
    page.wait_for_selector("#purity-chart circle")
    shot = tmp_path / "qa.png"
    page.screenshot(path=str(shot), full_page=True)
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[0] > 400
    assert float(image.std()) > 10  # not a blank page
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20


# Reviews answer 300 ms late, so keys pressed in a row all land while one is being saved.
SLOW_REVIEWS = """
const realFetch = window.fetch;
window.fetch = (url, options) => options && options.method === "POST"
  ? new Promise((resolve) => setTimeout(resolve, 300)).then(() => realFetch(url, options))
  : realFetch(url, options);
"""


def _reviews_by_decision(store: AuditStore) -> dict[int, int]:
    from sqlalchemy import func, select

    from scrapvision.audit.tables import reviews

    with store.engine.connect() as connection:
        return dict(connection.execute(select(reviews.c.decision_id, func.count())
                                       .group_by(reviews.c.decision_id)).all())


def _row_ids(page) -> list[str]:
    return page.eval_on_selector_all("#decisions tbody tr", "rows => rows.map(r => r.dataset.id)")


def test_fast_keys_review_each_decision_once_and_keep_every_row(served, page):
    base, store = served
    page.add_init_script(SLOW_REVIEWS)
    _open_with_key(page, base)
    page.fill("#reviewer", "qa-anna")
    page.click("h1")
    rows = _row_ids(page)

    page.keyboard.press("c")
    page.keyboard.press("c")  # while the first is saved: ignored
    page.wait_for_selector(f"tr[data-id='{rows[0]}'] td.review-confirm")
    page.wait_for_selector(f"tr.selected[data-id='{rows[1]}']")
    page.keyboard.press("c")
    page.keyboard.press("j")  # moved on before the answer: the answer must not move back
    page.wait_for_selector(f"tr[data-id='{rows[1]}'] td.review-confirm")
    time.sleep(0.2)  # let any late redraw happen
    assert _row_ids(page) == rows
    assert page.get_attribute("#decisions tbody tr.selected", "data-id") == rows[2]
    assert _reviews_by_decision(store) == {int(rows[0]): 1, int(rows[1]): 1}


def test_filters_follow_the_line_and_name_the_model_and_errors_are_text(served, page):
    base, _ = served
    _open_with_key(page, base)
    page.select_option("#filter-line", "line2")
    classes = page.eval_on_selector_all("#filter-class option", "options => options.map(o => o.value)")
    assert classes == ["", "blue"]  # line2 only ever saw blue
    page.select_option("#filter-model", "tiny:v1")
    page.click("#apply")
    page.wait_for_function("document.querySelectorAll('#decisions tbody tr').length === 1")
    page.select_option("#filter-line", "")
    page.fill("#filter-min-conf", "0.9")
    page.fill("#filter-max-conf", "0.5")
    page.click("#apply")
    page.wait_for_selector("#status.error")
    status = page.inner_text("#status")
    assert "must not exceed" in status and "[{" not in status
