"""schemathesis against the service's own OpenAPI schema, in-process (ASGI), tiny model.

Every documented operation is called with generated valid and invalid parameters, headers
and bodies, with an admin key so the requests reach the handlers: none may answer 5xx.
The audit store is seeded with decisions first, so lookups and reviews find real rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans

from scrapvision.audit.store import AuditStore
from scrapvision.records import DecisionRecord
from scrapvision.service.app import create_app
from scrapvision.service.framing import BATCH_MEDIA_TYPE
from scrapvision.settings import Settings

from .conftest import KEYS, examples

# The batch body is raw bytes (length-prefixed frames): send what is generated as it is.
schemathesis.serializer.alias(BATCH_MEDIA_TYPE, "application/octet-stream")


def seed_decisions(settings: Settings) -> None:
    """A few stored decisions of every action, so ids 1.. exist for lookups and reviews."""
    with AuditStore(settings.audit) as store:
        for number, action in enumerate(["eject", "pass", "recirculate", "late", "overload"] * 4):
            decided = action not in ("late", "overload")
            store.submit(DecisionRecord(
                time=time.time(), line="tiny", frame_id=f"seed-{number}", model_name="tiny",
                model_version="v1", action=action, in_time=decided, latency_ms=3.0,
                class_name="red" if decided else None, confidence=0.9 if decided else None,
                bin="red" if action == "eject" else None))


@pytest.fixture
def service(make_settings: Callable[..., Settings]) -> Iterator[schemathesis.BaseSchema]:
    settings = make_settings(keys=True)
    seed_decisions(settings)
    yield schemathesis.openapi.from_asgi("/openapi.json", create_app(settings))
    shutdown_lifespans()  # schemathesis started the app's lifespan; close the store


FUZZ = settings(max_examples=examples(100, 1_000), deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


def test_no_operation_answers_5xx(service: schemathesis.BaseSchema, count_case) -> None:
    """Valid and invalid cases for every operation (schemathesis' pytest plugin needs a
    pytest older than ours, so the operations are driven through hypothesis directly)."""
    operations = [result.ok() for result in service.get_all_operations()]
    assert len(operations) >= 15  # the walk found the API, not an empty schema

    for operation in operations:
        cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                          operation.as_strategy(GenerationMode.NEGATIVE))

        @FUZZ
        @given(case=cases)
        def call(case: schemathesis.Case) -> None:
            response = case.call_and_validate(headers={"X-API-Key": KEYS["admin"]},
                                              checks=[not_a_server_error])
            count_case(f"{response.status_code // 100}xx")

        call()
