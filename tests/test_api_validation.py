"""Bad input gets a 422 naming the field (never a 500); admin needs the token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.demo import running_server
from tests.service import AUTH, small_settings


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
        ({"user_id": 1.5, "items": [ITEM]}, ("body", "user_id", "str")),
        ({"user_id": True, "items": [ITEM]}, ("body", "user_id", "str")),
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
        ({"user_id": "u1", "items": [ITEM], "history": ["i1", None]}, ("body", "history", 1, "str")),
        ({"user_id": "u1", "items": [ITEM], "history": ["i1", "h" * 17]}, ("body", "history", 1)),
        ({"user_id": "u1", "items": [ITEM], "history": [1, ""]}, ("body", "history", 1)),
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
        ({**EVENT, "item_id": None}, ("body", "events", 1, "item_id", "str")),
        ({**EVENT, "timestamp": -5}, ("body", "events", 1, "timestamp")),
        ({**EVENT, "timestamp": "yesterday"}, ("body", "events", 1, "timestamp")),
        ({**EVENT, "user_id": "u" * 17}, ("body", "events", 1, "user_id")),
    ],
)
def test_interactions_reject_bad_events(client: httpx.Client, event: dict[str, Any], loc: tuple[Any, ...]) -> None:
    before = client.get("/admin/status", headers=AUTH).json()
    assert loc in error_locs(client.post("/v1/interactions", json={"events": [EVENT, event]}))
    # nothing of a refused batch is logged, not even its good first event
    after = client.get("/admin/status", headers=AUTH).json()
    assert after == before


def test_integers_too_long_to_parse_are_a_422_that_does_not_echo_the_body(client: httpx.Client) -> None:
    body = '{"user_id": ' + "9" * 5000 + ', "items": [{"item_id": 1}]}'
    response = client.post("/v1/predict", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["type"] == "json_invalid" and "out of range" in error["msg"] and error["input"] is None


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
