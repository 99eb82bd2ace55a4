"""Operator routes: close a period, inspect the registry, roll back and pin.

Every route needs ``Authorization: Bearer <ASMG_ADMIN_TOKEN>``: 401 without
credentials, 403 with a wrong token. Without a configured token (allowed only
in development) the routes are open.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from msgspec import Meta
from pydantic import SecretStr

from app.errors import HTTPError
from app.routing import Reply, Route
from app.runtime import Runtime
from app.schemas import INT64_MAX, PointerOut, Problem, RolloverResponse, StatusResponse, VersionOut
from trainer.core.registry import ModelLoadError, load_version
from trainer.core.settings import Settings
from trainer.core.store.base import EmptyPeriod, Pointer, UnknownVersion

Version = Annotated[int, Meta(ge=1, le=INT64_MAX, description="A registry version (the stores keep 64 bits).")]


class BearerToken:
    """The admin routes' guard: ``Authorization: Bearer <token>``, compared in constant time."""

    def __init__(self, token: SecretStr | None) -> None:
        self.scheme_name = "HTTPBearer"
        self.scheme: dict[str, Any] = {"type": "http", "scheme": "bearer", "description": "ASMG_ADMIN_TOKEN"}
        self.responses: Mapping[int, Reply] = {
            401: Reply(Problem, "No bearer token."),
            403: Reply(Problem, "A wrong token."),
        }
        self._expected = None if token is None else token.get_secret_value().encode()

    def check(self, headers: Sequence[tuple[bytes, bytes]]) -> None:
        if self._expected is None:
            return
        sent = next((value for name, value in headers if name == b"authorization"), b"")
        scheme, _, credentials = sent.partition(b" ")
        if scheme.lower() != b"bearer" or not credentials:
            raise HTTPError(401, "admin routes need Authorization: Bearer <token>", [(b"www-authenticate", b"Bearer")])
        if not hmac.compare_digest(credentials, self._expected):
            raise HTTPError(403, "wrong admin token")


def admin_routes(settings: Settings) -> list[Route]:
    guard = BearerToken(settings.admin_token)
    conflict = Reply(Problem, "Refused: nothing changes.")
    return [
        Route(
            "POST",
            "/admin/rollover",
            rollover,
            Reply(RolloverResponse, "The period closed and queued."),
            responses={409: Reply(Problem, "The open period is empty.")},
            guard=guard,
            tags=("admin",),
        ),
        Route("GET", "/admin/status", status, Reply(StatusResponse, "Status."), guard=guard, tags=("admin",)),
        Route("GET", "/admin/models", models, Reply(list[VersionOut], "Kept versions."), guard=guard, tags=("admin",)),
        Route(
            "POST",
            "/admin/models/{version}/activate",
            activate,
            Reply(PointerOut, "The pointer, pinned to the version."),
            params={"version": Version},
            responses={404: Reply(Problem, "No such version."), 409: conflict},
            guard=guard,
            tags=("admin",),
        ),
        Route(
            "POST",
            "/admin/unpin",
            unpin,
            Reply(PointerOut, "The pointer, following new versions."),
            responses={409: conflict},
            guard=guard,
            tags=("admin",),
        ),
    ]


def pointer_out(pointer: Pointer) -> PointerOut:
    return PointerOut(version=pointer.version, pinned=pointer.pinned)


def rollover(rt: Runtime) -> RolloverResponse:
    """Close the open period now and queue it for training.

    Periods are trained one at a time, in order; a rollover while the trainer is busy just
    adds to the queue. An empty period is refused (409).
    """
    store = rt.store
    try:
        closed = store.rollover()
    except EmptyPeriod:
        raise HTTPError(409, "the open period has no interactions yet; nothing to close") from None
    return RolloverResponse(
        closed_period=closed, open_period=closed + 1, queued_periods=closed - store.trained_through()
    )


def status(rt: Runtime) -> StatusResponse:
    """Open period, trainer progress and state, serving version, last period's metrics."""
    model = rt.holder.current
    open_period = rt.store.open_period()
    return StatusResponse(
        open_period=open_period,
        open_period_events=rt.store.period_size(open_period),
        trained_through=rt.store.trained_through(),
        serving_version=model.version if model else None,
        pointer=pointer_out(rt.store.pointer()),
        trainer=rt.store.trainer_status(),
    )


def models(rt: Runtime) -> list[VersionOut]:
    """Kept versions, oldest first, with their metadata."""
    pointed = rt.store.pointer().version
    return [VersionOut(**v.to_dict(), serving=v.version == pointed) for v in rt.store.versions()]


def activate(rt: Runtime, version: int) -> PointerOut:
    """Serve this version and pin it: new publications are ignored until unpinned."""
    try:
        load_version(rt.store, version, rt.settings.model())  # refuse what replicas could not load
        pointer = rt.store.activate(version)
    except UnknownVersion:
        raise HTTPError(404, f"version {version} is not in the registry") from None
    except ModelLoadError as exc:
        raise HTTPError(404 if rt.store.version(version) is None else 409, str(exc)) from None
    rt.watcher.sync()
    return pointer_out(pointer)


def unpin(rt: Runtime) -> PointerOut:
    """Follow new publications again, starting with the newest version; 409 (and the pin
    stays) if replicas could not load that version."""
    kept = rt.store.versions()
    if kept:
        try:
            load_version(rt.store, kept[-1].version, rt.settings.model())
        except ModelLoadError as exc:
            raise HTTPError(409, f"the newest version cannot be served, so the pin stays: {exc}") from None
    pointer = rt.store.unpin()
    rt.watcher.sync()
    return pointer_out(pointer)
