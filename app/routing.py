"""The route table: what each route takes, answers and may refuse, and its handler.

One :class:`Route` is all there is of a route: :mod:`app.dispatch` serves it
from the table and :mod:`app.openapi` documents it from the same table.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

from app.decoding import BodyDecoder
from app.errors import HTTPError

JSON = "application/json"
NO_PARAMS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class Reply:
    """One answer a route gives: its body's type (``None``: no body is declared), what it means,
    and its media type."""

    body: Any
    description: str
    media_type: str = JSON


class Answer(NamedTuple):
    """What a handler returns to answer with a status other than its route's."""

    status: int
    body: Any


class Guard(Protocol):
    """A check of a request's headers before its handler runs, with how the document declares it."""

    scheme_name: str
    scheme: dict[str, Any]  # the OpenAPI security scheme
    responses: Mapping[int, Reply]  # what it refuses with

    def check(self, headers: Sequence[tuple[bytes, bytes]]) -> None: ...  # raises HTTPError to refuse


@dataclass(frozen=True)
class Route:
    """``handler(runtime, *path parameters, body)`` answers ``method path`` with ``reply``'s body
    (or an :class:`Answer`), in a worker thread unless it is a coroutine function."""

    method: str
    path: str  # a template: /admin/models/{version}/activate
    handler: Callable[..., Any]
    reply: Reply
    status: int = 200
    body: type | None = None  # the request body's type (JSON)
    params: Mapping[str, Any] = field(default_factory=dict)  # path parameters' types, in the handler's order
    responses: Mapping[int, Reply] = field(default_factory=dict)  # its own answers besides success
    guard: Guard | None = None
    tags: tuple[str, ...] = ()
    documented: bool = True  # in the OpenAPI document (the document's own routes are not)
    decoder: BodyDecoder[Any] | None = field(init=False)
    blocking: bool = field(init=False)
    content_type: bytes = field(init=False)  # its success's header value

    def __post_init__(self) -> None:
        object.__setattr__(self, "decoder", None if self.body is None else BodyDecoder(self.body))
        object.__setattr__(self, "blocking", not inspect.iscoroutinefunction(self.handler))
        object.__setattr__(self, "content_type", self.reply.media_type.encode())


class RouteTable:
    """Routes by path and method. A path without parameters is one dict lookup."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = list(routes)
        self._fixed: dict[str, dict[str, Route]] = {}
        self._templated: dict[str, tuple[re.Pattern[str], dict[str, Route]]] = {}
        for route in self.routes:
            if "{" in route.path:
                if route.path not in self._templated:
                    pattern = re.compile(re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", route.path))
                    self._templated[route.path] = (pattern, {})
                methods = self._templated[route.path][1]
            else:
                methods = self._fixed.setdefault(route.path, {})
            if route.method in methods:
                raise ValueError(f"{route.method} {route.path} is routed twice")
            methods[route.method] = route

    def match(self, method: str, path: str) -> tuple[Route, Mapping[str, str]]:
        """The route for ``method path`` and its path parameters; 404 for an unknown path, 405 (with
        the methods it has) for a method it has not."""
        methods = self._fixed.get(path)
        params: Mapping[str, str] = NO_PARAMS
        if methods is None:
            _, methods, params = self._templated_at(path)
            if methods is None:
                raise HTTPError(404, "Not Found")
        route = methods.get(method)
        if route is None:
            raise HTTPError(405, "Method Not Allowed", [(b"allow", ", ".join(sorted(methods)).encode())])
        return route, params

    def template(self, path: str) -> str | None:
        """The template of the routes at ``path``, if any: a bounded label for metrics."""
        return path if path in self._fixed else self._templated_at(path)[0]

    def _templated_at(self, path: str) -> tuple[str | None, dict[str, Route] | None, Mapping[str, str]]:
        for template, (pattern, methods) in self._templated.items():
            found = pattern.fullmatch(path)
            if found:
                return template, methods, found.groupdict()
        return None, None, NO_PARAMS
