"""Bad input gets a 422 naming the field (never a 500); admin needs the token."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from msgspec import Struct

from app.dispatch import Dispatcher
from app.metrics import ServiceMetrics
from app.routing import Reply, Route, RouteTable
from tests.service import AUTH, running_server, small_settings


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    settings = small_settings(
        tmp_path_factory.mktemp("api") / "state",
        max_items=5,
        max_history=7,
        max_events=4,
        max_body_bytes=8192,
        max_id_length=16,
        max_categories=3,
        # no trainer: its status record, which /admin/status shows, changes on its own
        trainer_in_process=False,
    )
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as c:
        yield c


def error_locs(response: httpx.Response) -> list[tuple[Any, ...]]:
    assert response.status_code == 422, response.text
    return [tuple(e["loc"]) for e in response.json()["detail"]]


ITEM = {"item_id": "i1", "categories": ["c1"]}
EVENT = {"user_id": "u1", "item_id": "i1", "label": 1}


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"user_id": "u1", "items": []}, ("body", "items")),
        ({"user_id": "u1", "items": [ITEM] * 6}, ("body", "items")),
        ({"items": [ITEM]}, ("body", "user_id")),
        ({"user_id": 1.5, "items": [ITEM]}, ("body", "user_id")),
        ({"user_id": True, "items": [ITEM]}, ("body", "user_id")),
        ({"user_id": "u1", "items": [{"categories": []}]}, ("body", "items", 0, "item_id")),
        ({"user_id": "u1", "items": "i1"}, ("body", "items")),
        ({"user_id": "x" * 17, "items": [ITEM]}, ("body", "user_id")),
        ({"user_id": "", "items": [ITEM]}, ("body", "user_id")),
        ({"user_id": 10**17, "items": [ITEM]}, ("body", "user_id")),
        ({"user_id": "u1", "items": [ITEM, {"item_id": "y" * 100}]}, ("body", "items", 1, "item_id")),
        (
            {"user_id": "u1", "items": [{"item_id": 1, "categories": ["a", "b", "c", "d"]}]},
            ("body", "items", 0, "categories"),
        ),
        ({"user_id": "u1", "items": [{"item_id": 1, "categories": ["z" * 17]}]}, ("body", "items", 0, "categories", 0)),
        ({"user_id": "u1", "items": [ITEM], "extra": 1}, ("body", "extra")),
        ({"user_id": "u1", "items": [ITEM], "history": "i1"}, ("body", "history")),
        ({"user_id": "u1", "items": [ITEM], "history": ["i1"] * 8}, ("body", "history")),
        ({"user_id": "u1", "items": [ITEM], "history": ["i1", None]}, ("body", "history", 1)),
        ({"user_id": "u1", "items": [ITEM], "history": ["i1", "h" * 17]}, ("body", "history", 1)),
        ({"user_id": "u1", "items": [ITEM], "history": [1, ""]}, ("body", "history", 1)),
        ({"user_id": "u1", "items": [ITEM], "history": ["x" * 17] + ["i1"] * 6}, ("body", "history", 0)),
        ({"user_id": 2**63, "items": [ITEM]}, ("body", "user_id")),
        ({"user_id": "u1", "items": [{"item_id": -(2**63) - 1}]}, ("body", "items", 0, "item_id")),
        ({"user_id": 1.0, "items": [ITEM]}, ("body", "user_id")),
    ],
)
def test_predict_rejects_bad_bodies(client: httpx.Client, body: dict[str, Any], loc: tuple[Any, ...]) -> None:
    assert loc in error_locs(client.post("/v1/predict", json=body))


@pytest.mark.parametrize(
    ("event", "loc"),
    [
        ({**EVENT, "label": 2}, ("body", "events", 1, "label")),
        ({**EVENT, "label": "1"}, ("body", "events", 1, "label")),
        ({**EVENT, "label": None}, ("body", "events", 1, "label")),
        ({"user_id": "u1", "item_id": "i1"}, ("body", "events", 1, "label")),
        ({**EVENT, "item_id": None}, ("body", "events", 1, "item_id")),
        ({**EVENT, "timestamp": -5}, ("body", "events", 1, "timestamp")),
        ({**EVENT, "timestamp": "yesterday"}, ("body", "events", 1, "timestamp")),
        ({**EVENT, "user_id": "u" * 17}, ("body", "events", 1, "user_id")),
        ({**EVENT, "label": True}, ("body", "events", 1, "label")),
        ({**EVENT, "label": 1.0}, ("body", "events", 1, "label")),
        ({**EVENT, "label": 2**64}, ("body", "events", 1, "label")),
        ({**EVENT, "timestamp": 0}, ("body", "events", 1, "timestamp")),
        ({**EVENT, "timestamp": "5"}, ("body", "events", 1, "timestamp")),
        ({**EVENT, "item_id": 10**20}, ("body", "events", 1, "item_id")),
    ],
)
def test_interactions_reject_bad_events(client: httpx.Client, event: dict[str, Any], loc: tuple[Any, ...]) -> None:
    before = client.get("/admin/status", headers=AUTH).json()
    assert loc in error_locs(client.post("/v1/interactions", json={"events": [EVENT, event]}))
    # nothing of a refused batch is logged, not even its good first event
    after = client.get("/admin/status", headers=AUTH).json()
    assert after == before


@pytest.mark.parametrize("timestamp", ["Infinity", "-Infinity", "NaN", "1e400"])
def test_timestamps_must_be_finite(client: httpx.Client, timestamp: str) -> None:
    before = client.get("/admin/status", headers=AUTH).json()
    body = '{"events": [{"user_id": "u1", "item_id": "i1", "label": 1, "timestamp": ' + timestamp + "}]}"
    response = client.post("/v1/interactions", content=body, headers={"Content-Type": "application/json"})
    assert ("body", "events", 0, "timestamp") in error_locs(response)
    assert client.get("/admin/status", headers=AUTH).json() == before


def requests_counted(client: httpx.Client, path: str, status: int) -> float:
    wanted = f'asmg_http_requests_total{{route="{path}",status="{status}"}} '
    lines = [line for line in client.get("/metrics").text.splitlines() if line.startswith(wanted)]
    return float(lines[0].split()[-1]) if lines else 0.0


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/v1/interactions", '{"events": [{"user_id": "u", "item_id": "i", "label": 18446744073709551616}]}', 0),
        ("/v1/predict", '{"user_id": "u", "items": [{"item_id": 1}], "extra": -18446744073709551616000}', 1),
    ],
)
def test_integers_beyond_64_bits_are_echoed_in_a_counted_422(
    client: httpx.Client, path: str, body: str, loc: int
) -> None:
    before = requests_counted(client, path, 422)
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    sent = int(body.split(": ")[-1].rstrip("}]"))
    assert error["input"] == sent and error["loc"] == [["body", "events", 0, "label"], ["body", "extra"]][loc]
    assert requests_counted(client, path, 422) == before + 1


class Empty(Struct, forbid_unknown_fields=True):
    pass


def test_an_answer_that_cannot_be_written_is_still_a_counted_json_500() -> None:
    async def unwritable(runtime: Any, body: Empty) -> dict[str, Any]:
        return {"value": object()}  # a bug of the service's own: msgspec cannot write it

    metrics = ServiceMetrics()
    routes = RouteTable([Route("POST", "/x", unwritable, Reply(None, "never"), body=Empty)])
    dispatcher = Dispatcher(routes, metrics, 1024, lifespan=contextlib.nullcontext)  # type: ignore[arg-type]
    dispatcher.runtime = object()
    scope = {"type": "http", "method": "POST", "path": "/x", "headers": [(b"content-type", b"application/json")]}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def send_fails(message: dict[str, Any]) -> None:
        raise OSError("the connection broke")

    asyncio.run(dispatcher(scope, receive, send))
    assert sent[0]["status"] == 500 and json.loads(sent[1]["body"]) == {"detail": "Internal Server Error"}
    with pytest.raises(OSError):
        asyncio.run(dispatcher(scope, receive, send_fails))
    counted = metrics.registry.get_sample_value("asmg_http_requests_total", {"route": "/x", "status": "500"})
    assert counted == 2


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/interactions"])
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx"])
def test_bodies_that_are_not_declared_json_are_415(client: httpx.Client, path: str, content_type: str | None) -> None:
    before = client.get("/admin/status", headers=AUTH).json()
    counted = requests_counted(client, path, 415)
    body = '{"events": [{"user_id": "u1", "item_id": "i1", "label": 1}]}'
    response = client.post(path, content=body, headers={"Content-Type": content_type} if content_type else {})
    assert response.status_code == 415 and "application/json" in response.json()["detail"]
    assert client.get("/admin/status", headers=AUTH).json() == before  # nothing logged
    assert requests_counted(client, path, 415) == counted + 1


def test_json_with_parameters_is_json(client: httpx.Client) -> None:
    body = '{"events": [{"user_id": "u1", "item_id": "i1", "label": 1}]}'
    response = client.post(
        "/v1/interactions", content=body, headers={"Content-Type": "Application/JSON; charset=utf-8"}
    )
    assert response.status_code == 202


def test_integers_too_long_to_parse_are_a_422_that_does_not_echo_the_body(client: httpx.Client) -> None:
    body = '{"user_id": ' + "9" * 5000 + ', "items": [{"item_id": 1}]}'
    response = client.post("/v1/predict", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "user_id"] and "out of range" in error["msg"] and error["input"] is None


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/interactions"])
def test_oversized_bodies_are_refused_before_parsing(client: httpx.Client, path: str) -> None:
    before = client.get("/admin/status", headers=AUTH).json()
    body = '{"user_id": "' + "x" * 9000 + '"}'
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "ASMG_MAX_BODY_BYTES" in response.json()["detail"]
    assert client.get("/admin/status", headers=AUTH).json() == before


def test_interaction_batches_have_limits(client: httpx.Client) -> None:
    assert ("body", "events") in error_locs(client.post("/v1/interactions", json={"events": []}))
    assert ("body", "events") in error_locs(client.post("/v1/interactions", json={"events": [EVENT] * 5}))
    accepted = client.post("/v1/interactions", json={"events": [EVENT] * 4})
    assert accepted.status_code == 202 and accepted.json()["accepted"] == 4


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/interactions"])
def test_malformed_json_is_422(client: httpx.Client, path: str) -> None:
    response = client.post(path, content=b'{"user_id": "u1", "items": [', headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_admin_needs_the_right_token(client: httpx.Client) -> None:
    for method, path in [
        ("POST", "/admin/rollover"),
        ("GET", "/admin/status"),
        ("GET", "/admin/models"),
        ("POST", "/admin/models/1/activate"),
        ("POST", "/admin/unpin"),
    ]:
        assert client.request(method, path).status_code == 401
        assert client.request(method, path, headers={"Authorization": "Bearer wrong"}).status_code == 403
        assert client.request(method, path, headers={"Authorization": "Basic dTpw"}).status_code == 401
    assert client.get("/admin/models", headers=AUTH).status_code == 200


@pytest.mark.parametrize("version", ["0", "-1", "9223372036854775808", "99999999999999999999"])
def test_activate_versions_out_of_range_are_422(client: httpx.Client, version: str) -> None:
    response = client.post(f"/admin/models/{version}/activate", headers=AUTH)
    assert response.status_code == 422, response.text
    assert ("path", "version") in [tuple(e["loc"]) for e in response.json()["detail"]]


def test_activate_unknown_version_is_404(client: httpx.Client) -> None:
    response = client.post("/admin/models/999/activate", headers=AUTH)
    assert response.status_code == 404 and "999" in response.json()["detail"]
    assert ("path", "version") in [
        tuple(e["loc"]) for e in client.post("/admin/models/x/activate", headers=AUTH).json()["detail"]
    ]


def test_activate_pins_and_unpin_follows_newest(client: httpx.Client) -> None:
    pinned = client.post("/admin/models/1/activate", headers=AUTH).json()
    assert pinned == {"version": 1, "pinned": True}
    assert client.get("/admin/status", headers=AUTH).json()["pointer"]["pinned"] is True
    assert "asmg_model_pinned 1.0" in client.get("/metrics").text
    assert client.post("/admin/unpin", headers=AUTH).json()["pinned"] is False


def test_health_readiness_and_openapi(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    spec = client.get("/openapi.json").json()
    for path in ["/v1/predict", "/v1/interactions", "/admin/rollover", "/admin/models/{version}/activate", "/metrics"]:
        assert path in spec["paths"]
    assert "bearer" in str(spec["components"]["securitySchemes"]).lower()


def test_openapi_states_the_running_limits_and_the_error_answers(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    predict, interactions = schemas["PredictRequest"], schemas["InteractionsRequest"]
    assert (predict["properties"]["items"]["minItems"], predict["properties"]["items"]["maxItems"]) == (1, 5)
    assert predict["properties"]["history"]["anyOf"][0]["maxItems"] == 7
    assert (interactions["properties"]["events"]["minItems"], interactions["properties"]["events"]["maxItems"]) == (
        1,
        4,
    )
    assert schemas["Candidate"]["properties"]["categories"]["maxItems"] == 3
    text, integer = predict["properties"]["user_id"]["anyOf"]
    assert text == {"type": "string", "minLength": 1, "maxLength": 16}
    assert integer == {"type": "integer", "minimum": -(10**15 - 1), "maximum": 10**16 - 1}
    event = schemas["InteractionIn"]["properties"]
    assert (event["label"]["type"], event["label"]["minimum"], event["label"]["maximum"]) == ("integer", 0, 1)
    assert event["timestamp"]["anyOf"][0] == {"type": "number", "exclusiveMinimum": 0}
    for path in ("/v1/predict", "/v1/interactions"):
        responses = spec["paths"][path]["post"]["responses"]
        assert {"413", "415", "422", "503"} <= set(responses)
        assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/InvalidRequest")
        assert responses["415"]["content"]["application/json"]["schema"]["$ref"].endswith("/Problem")
    version = spec["paths"]["/admin/models/{version}/activate"]["post"]["parameters"][0]["schema"]
    assert (version["minimum"], version["maximum"]) == (1, 2**63 - 1)


def test_every_route_is_counted_by_its_template_and_status(client: httpx.Client) -> None:
    calls = [
        ("GET", "/healthz", {}, 200),
        ("GET", "/readyz", {}, 200),
        ("GET", "/admin/status", {}, 401),
        ("GET", "/admin/models", AUTH, 200),
        ("POST", "/admin/models/123456/activate", AUTH, 404),
        ("GET", "/v1/predict", {}, 405),
        ("GET", "/metrics", {}, 200),
        ("GET", "/nowhere", {}, 404),
    ]
    routes = {"/admin/models/123456/activate": "/admin/models/{version}/activate", "/nowhere": "unmatched"}
    before = [requests_counted(client, routes.get(path, path), status) for _, path, _, status in calls]
    for method, path, headers, status in calls:
        assert client.request(method, path, headers=headers).status_code == status
    after = [requests_counted(client, routes.get(path, path), status) for _, path, _, status in calls]
    # /metrics also counts the scrapes that read these figures
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 1, 1, 1, len(calls) + 1, 1]
    latency = f'asmg_http_request_duration_seconds_count{{route="{routes["/nowhere"]}"}}'
    assert latency in client.get("/metrics").text


def test_a_method_a_path_has_not_is_405_naming_those_it_has(client: httpx.Client) -> None:
    for method, path, allowed in [("GET", "/v1/predict", "POST"), ("DELETE", "/healthz", "GET")]:
        response = client.request(method, path)
        assert response.status_code == 405 and response.headers["allow"] == allowed


def test_a_server_that_cannot_start_says_so() -> None:
    @contextlib.asynccontextmanager
    async def failing() -> Any:
        raise RuntimeError("no store")
        yield

    dispatcher = Dispatcher(RouteTable([]), ServiceMetrics(), 1024, failing)
    messages = iter([{"type": "lifespan.startup"}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with pytest.raises(RuntimeError):
        asyncio.run(dispatcher({"type": "lifespan"}, receive, send))
    assert sent[0]["type"] == "lifespan.startup.failed" and "no store" in sent[0]["message"]
