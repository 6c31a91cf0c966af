"""HTTP face of the audit store: `router` (`/v1/audit/...`, QA role) and `qa_router` (`/qa`).

The app factory includes both and puts the started `AuditStore` at `app.state.audit`.
Database work is synchronous, so the endpoints are plain `def` and run in the thread
pool, never on the event loop that serves frames. The `/qa` page itself is static and
holds no data; every call it makes goes through `router` with the key the user typed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import FileResponse, HTMLResponse, StreamingResponse
from pydantic import BaseModel, Field

from scrapvision.audit import queries, reviews
from scrapvision.audit.frames import FRAME_HASH, FrameReason
from scrapvision.audit.store import AuditStore
from scrapvision.service.auth import require_role

router = APIRouter(prefix="/v1/audit", tags=["audit"], dependencies=[Depends(require_role("qa"))])
qa_router = APIRouter(tags=["qa"], include_in_schema=False)

_EXPORT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}
_STATIC_TYPES = {"qa.js": "text/javascript; charset=utf-8", "qa.css": "text/css; charset=utf-8"}


def get_store(request: Request) -> AuditStore:
    return request.app.state.audit


Store = Annotated[AuditStore, Depends(get_store)]
# Row ids are signed 64-bit in SQLite and PostgreSQL: a larger number is a 422, not a 500.
INT64 = {"ge": -(2**63), "le": 2**63 - 1}
DecisionId = Annotated[int, Path(**INT64)]


class ReviewIn(BaseModel):
    """A QA verdict on one decision."""

    reviewer: Annotated[queries.Name, Field(max_length=64, examples=["anna"])]
    verdict: reviews.Verdict
    label: str | None = Field(
        None, pattern=reviews.LABEL_PATTERN,
        description="relabel: the class the item really is; confirm: optional, the decided class",
    )


@router.get("/decisions")
def list_decisions(
    store: Store,
    where: Annotated[queries.DecisionFilter, Query()],
    limit: Annotated[int, Query(ge=1, le=queries.MAX_PAGE)] = 50,
    cursor: Annotated[int | None, Query(description="next_cursor of the previous page",
                                        **INT64)] = None,
    format: Annotated[Literal["json", "csv", "jsonl"], Query(
        description="csv / jsonl: every matching decision, streamed (limit and cursor ignored)",
    )] = "json",
) -> Any:
    """Decisions newest first, filtered; a page with `total` and `next_cursor`, or an export."""
    if format == "json":
        return queries.page(store.engine, where, limit, cursor)
    chunks = queries.iterate(store.engine, where)
    body = queries.export_csv(chunks) if format == "csv" else queries.export_jsonl(chunks)
    filename = f"decisions-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.{format}"
    return StreamingResponse(body, media_type=_EXPORT_TYPES[format],
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/decisions/{decision_id}")
def get_decision(store: Store, decision_id: DecisionId) -> dict[str, Any]:
    """One decision, its latest review and every earlier review."""
    item = queries.get(store.engine, decision_id)
    if item is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no decision {decision_id}")
    return {**item, "reviews": reviews.history(store.engine, decision_id)}


@router.post("/decisions/{decision_id}/review", status_code=status.HTTP_201_CREATED)
def review_decision(store: Store, decision_id: DecisionId, review: ReviewIn) -> dict[str, Any]:
    """Confirm or relabel a decision; stored as a new review, the decision stays as it was."""
    try:
        return reviews.add_review(store.engine, decision_id, review.reviewer, review.verdict,
                                  review.label)
    except LookupError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(error)) from error
    except reviews.ReviewError as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from error


@router.get("/frames/{frame_hash}", response_class=FileResponse)
def get_frame(store: Store,
              frame_hash: Annotated[str, Path(pattern=FRAME_HASH.pattern)]) -> FileResponse:
    """A stored review frame (JPEG); its name is its sha256, so it never changes."""
    path = store.frame_store.path(frame_hash)
    if not path.is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such frame (pruned or never kept)")
    return FileResponse(path, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=31536000, immutable"})


@router.get("/purity")
def get_purity(store: Store, line: queries.Name | None = None,
               since: queries.Moment | None = None, until: queries.Moment | None = None,
               frame_reason: FrameReason | None = None) -> dict[str, Any]:
    """Audited accuracy per line and shift, estimated purity per bin: share, n, Wilson 95% CI.

    Reviews over-represent low-margin frames; `frame_reason=random` gives the unbiased
    estimate from the random sample alone.
    """
    if since and until and since >= until:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "since must be before until")
    return reviews.purity(store.engine, store.settings, line, since, until, frame_reason)


@router.get("/throughput")
def get_throughput(
    store: Store,
    line: queries.Name,
    since: Annotated[queries.Moment | None, Query(description="default: 8 h before until")] = None,
    until: Annotated[queries.Moment | None, Query(description="default: now")] = None,
    bucket_s: int = Query(300, ge=60, le=86_400, multiple_of=60),
) -> dict[str, Any]:
    """Decisions per time bucket and action on one line, for charts."""
    until = until or datetime.now(UTC)
    since = since or until - timedelta(hours=8)
    if since >= until:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "since must be before until")
    return queries.throughput(store.engine, line, since, until, bucket_s)


@router.get("/facets")
def get_facets(store: Store) -> dict[str, Any]:
    """Lines, classes, bins, actions, model versions and labels seen: the filter choices."""
    return queries.facets(store.engine)


@router.get("/stats")
def get_stats(store: Store) -> dict[str, Any]:
    """Audit writer counters summed over every worker: buffered, written, dropped (and why),
    frames kept; `workers` says how many stores they cover, `this_worker` (and `last_error`)
    are the answering worker's."""
    return store.all_workers_stats()


@cache
def _static(name: str) -> bytes:
    return resources.files("scrapvision.audit").joinpath("static", name).read_bytes()


@qa_router.get("/qa", response_class=HTMLResponse)
def qa_page() -> HTMLResponse:
    """The QA web page: browse, filter and review decisions; purity and throughput charts."""
    return HTMLResponse(_static("qa.html"))


@qa_router.get("/qa/static/{name}")
def qa_static(name: str) -> Response:
    if name not in _STATIC_TYPES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such file")
    return Response(_static(name), media_type=_STATIC_TYPES[name])
