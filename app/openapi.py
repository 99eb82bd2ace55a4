"""The OpenAPI document, made from the route table that serves it, and its two routes
(``/openapi.json`` and the Swagger UI at ``/docs``).

Every schema in it is msgspec's JSON schema of a type the routes decode or
answer with: the request bodies under the running settings' limits, so that
the document states what the service enforces.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from app.errors import NOT_JSON
from app.routing import JSON, Reply, Route
from app.schemas import InvalidRequest, Problem

REF = "#/components/schemas/{name}"

# the answers the dispatcher gives for a route, besides the route's own (app/dispatch.py)
ANY_ROUTE = {503: Reply(Problem, "Starting up, no model loaded yet, or the store is unreachable.")}
BODY_ROUTE = {
    413: Reply(Problem, "The body is over ASMG_MAX_BODY_BYTES."),
    415: Reply(Problem, f"The body's Content-Type is missing or not application/json: {NOT_JSON}."),
    422: Reply(InvalidRequest, "The body is not JSON or breaks a rule; each error names its field."),
}
PARAMETER_ROUTE = {422: Reply(InvalidRequest, "A path parameter breaks a rule; the error names it.")}


def openapi_document(routes: Sequence[Route], info: Mapping[str, Any]) -> dict[str, Any]:
    documented = [route for route in routes if route.documented]
    types = list(dict.fromkeys(t for route in documented for t in _types(route)))
    refs, components = msgspec.json.schema_components(types, ref_template=REF)
    schema_of = dict(zip(types, refs, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    schemes: dict[str, Any] = {}
    for route in documented:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schema_of)
        if route.guard is not None:
            schemes[route.guard.scheme_name] = route.guard.scheme
    return {
        "openapi": "3.1.0",
        "info": dict(info),
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": schemes},
    }


def _answers(route: Route) -> dict[int, Reply]:
    """Every answer of ``route`` by status: the dispatcher's, then its own (which win)."""
    answers: dict[int, Reply] = dict(ANY_ROUTE)
    if route.body is not None:
        answers |= BODY_ROUTE
    if route.params:
        answers |= PARAMETER_ROUTE
    if route.guard is not None:
        answers |= route.guard.responses
    return answers | dict(route.responses) | {route.status: route.reply}


def _types(route: Route) -> list[Any]:
    bodies = [reply.body for reply in _answers(route).values() if reply.body is not None]
    return [*([route.body] if route.body is not None else []), *bodies]


def _operation(route: Route, schema_of: Mapping[Any, Any]) -> dict[str, Any]:
    summary, _, description = inspect.cleandoc(route.handler.__doc__ or "").partition("\n")
    operation: dict[str, Any] = {
        "tags": list(route.tags),
        "summary": summary,
        "description": description.strip(),
        "operationId": route.handler.__name__,
    }
    if route.params:
        operation["parameters"] = [
            {"name": name, "in": "path", "required": True, "schema": msgspec.json.schema(param)}
            for name, param in route.params.items()
        ]
    if route.body is not None:
        operation["requestBody"] = {"required": True, "content": {JSON: {"schema": schema_of[route.body]}}}
    operation["responses"] = {
        str(status): {
            "description": reply.description,
            **({"content": {_media(reply): {"schema": schema_of[reply.body]}}} if reply.body is not None else {}),
        }
        for status, reply in sorted(_answers(route).items())
    }
    if route.guard is not None:
        operation["security"] = [{route.guard.scheme_name: []}]
    return operation


def _media(reply: Reply) -> str:
    return reply.media_type.split(";", 1)[0].strip()


def document_routes(document: dict[str, Any], title: str) -> list[Route]:
    """``GET /openapi.json`` and ``GET /docs``, themselves not in the document."""
    encoded = msgspec.json.encode(document)
    page = SWAGGER_UI.replace("{title}", title).encode()

    async def openapi_json(runtime: object) -> bytes:
        return encoded

    async def docs(runtime: object) -> bytes:
        return page

    return [
        Route("GET", "/openapi.json", openapi_json, Reply(None, "", JSON), documented=False),
        Route("GET", "/docs", docs, Reply(None, "", "text/html; charset=utf-8"), documented=False),
    ]


# Swagger UI, from its published bundle, reading /openapi.json
SWAGGER_UI = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>
SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});
</script>
</body>
</html>
"""
