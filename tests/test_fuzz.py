"""The running service, fuzzed by schemathesis from its own OpenAPI document.

Every operation of /openapi.json gets generated requests, valid and invalid
ones (schemathesis's examples, coverage and fuzzing phases, as ``st run``
runs them), twice: with the admin token and with no Authorization header at
all. Every check schemathesis has runs on every answer: no 5xx, each status
code, content type, header and body as the document declares it, valid
requests accepted and invalid ones refused, credentials not ignored,
unsupported methods answered 405 with an Allow header (the two checks of
chained requests, use_after_free and ensure_resource_availability, belong to
the stateful phase, which has nothing to chain: the document has no links).
Bounded and seeded, so a run is the same every time.

(schemathesis's pytest integration, ``schemathesis.pytest.from_fixture``,
does not run under pytest 9.2, so the test drives its engine, as its CLI does.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from schemathesis.engine import events
from schemathesis.engine import from_schema as engine_for

from tests.service import AUTH, running_server, small_settings

EXAMPLES = 800  # fuzzed requests per operation and run, besides the coverage phase's own
SEED = 20210927


def whole_numbers_as_integers(value: Any) -> Any:
    """``value`` with every float that is a whole number written as an integer.

    JSON Schema counts 1.0 as an integer, and no schema can tell it from 1; the service reads JSON
    integers strictly (a label of 1.0 or an id of 5.0 is a 422, tests/test_api_validation.py), so
    schemathesis would take those 422s for valid data refused. Writing its whole floats as integers
    changes no request's validity under the document, and keeps positive_data_acceptance on."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: whole_numbers_as_integers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole_numbers_as_integers(v) for v in value]
    return value


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(small_settings(tmp_path_factory.mktemp("fuzz") / "state")) as url:
        yield url


def fuzz(url: str, headers: dict[str, str]) -> tuple[int, list[str]]:
    """Run schemathesis against ``url``; the number of requests it made, and every failure it found."""
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "cache": {"enabled": False},  # what earlier runs learnt would make this one differ
            "headers": headers,
            "request-timeout": 60,
            "generation": {"max-examples": EXAMPLES, "deterministic": True, "database": "none"},
            # every check there is (an answer slower than this one's limit fails too)
            "checks": {"enabled": True, "max_response_time": 30},
        }
    )
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)
    schema.hook("map_body")(lambda context, body: whole_numbers_as_integers(body))
    requests, failures = 0, set()
    for event in engine_for(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            requests += len(event.recorder.interactions)
            for checks in event.recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        failure = check.failure_info.failure
                        failures.add(
                            f"{event.label}: [{check.name}] {failure.title}: {failure.message}\n"
                            f"{check.failure_info.code_sample}"
                        )
                    elif check.status == "error":
                        failures.add(f"{event.label}: [{check.name}] the check itself failed")
        elif isinstance(event, events.NonFatalError):
            failures.add(f"{event.label}: error: {event.info}")
        elif isinstance(event, events.FatalError):
            raise event.exception
        elif isinstance(event, events.EngineFinished):
            assert event.stop_reason == "completed", event.stop_reason
            failures.update(f"after the run: {failure.title}: {failure.message}" for failure in event.failures)
    return requests, sorted(failures)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("who", ["admin", "anonymous"])
def test_every_answer_is_what_the_document_says(service: str, who: str) -> None:
    started = time.monotonic()
    requests, failures = fuzz(service, AUTH if who == "admin" else {})
    print(f"schemathesis ({who}): {requests} requests in {time.monotonic() - started:.0f} s")
    assert requests > 200
    assert not failures, "\n\n".join(failures)
