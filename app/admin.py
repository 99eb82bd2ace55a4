"""Operator endpoints: close a period, inspect the registry, roll back and pin.

Every route needs ``Authorization: Bearer <ASMG_ADMIN_TOKEN>``: 401 without
credentials, 403 with a wrong token. Without a configured token (allowed only
in development) the routes are open.
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.schemas import INT64_MAX, PointerOut, Problem, RolloverResponse, StatusResponse, VersionOut
from trainer.core.registry import ModelLoadError, load_version
from trainer.core.settings import Settings
from trainer.core.store.base import EmptyPeriod, Pointer, UnknownVersion

if TYPE_CHECKING:
    from app.main import Runtime

bearer = HTTPBearer(auto_error=False, description="ASMG_ADMIN_TOKEN")


def pointer_out(pointer: Pointer) -> PointerOut:
    return PointerOut(version=pointer.version, pinned=pointer.pinned)


def admin_router(settings: Settings) -> APIRouter:
    def authorised(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if settings.admin_token is None:
            return
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(401, "admin routes need Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"})
        expected = settings.admin_token.get_secret_value().encode()
        if not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise HTTPException(403, "wrong admin token")

    router = APIRouter(
        prefix="/admin",
        tags=["admin"],
        dependencies=[Depends(authorised)],
        responses={401: {"model": Problem}, 403: {"model": Problem}},
    )

    def runtime(request: Request) -> Runtime:
        rt: Runtime = request.app.state.runtime
        return rt

    @router.post("/rollover", response_model=RolloverResponse, responses={409: {"model": Problem}})
    def rollover(request: Request) -> RolloverResponse:
        """Close the open period now and queue it for training.

        Periods are trained one at a time, in order; a rollover while the
        trainer is busy just adds to the queue. An empty period is refused (409).
        """
        store = runtime(request).store
        try:
            closed = store.rollover()
        except EmptyPeriod as exc:
            raise HTTPException(409, "the open period has no interactions yet; nothing to close") from exc
        return RolloverResponse(
            closed_period=closed, open_period=closed + 1, queued_periods=closed - store.trained_through()
        )

    @router.get("/status", response_model=StatusResponse)
    def status(request: Request) -> StatusResponse:
        """Open period, trainer progress and state, serving version, last period's metrics."""
        rt = runtime(request)
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

    @router.get("/models", response_model=list[VersionOut])
    def models(request: Request) -> list[VersionOut]:
        """Kept versions, oldest first, with their metadata."""
        store = runtime(request).store
        pointed = store.pointer().version
        return [VersionOut(**v.to_dict(), serving=v.version == pointed) for v in store.versions()]

    @router.post(
        "/models/{version}/activate",
        response_model=PointerOut,
        responses={404: {"model": Problem}, 409: {"model": Problem}},
    )
    def activate(
        version: Annotated[int, Path(ge=1, le=INT64_MAX, description="A registry version (the stores keep 64 bits).")],
        request: Request,
    ) -> PointerOut:
        """Serve this version and pin it: new publications are ignored until unpinned."""
        rt = runtime(request)
        try:
            load_version(rt.store, version, rt.settings.model())  # refuse what replicas could not load
            pointer = rt.store.activate(version)
        except UnknownVersion as exc:
            raise HTTPException(404, f"version {version} is not in the registry") from exc
        except ModelLoadError as exc:
            status = 404 if rt.store.version(version) is None else 409
            raise HTTPException(status, str(exc)) from exc
        rt.watcher.sync()
        return pointer_out(pointer)

    @router.post("/unpin", response_model=PointerOut, responses={409: {"model": Problem}})
    def unpin(request: Request) -> PointerOut:
        """Follow new publications again, starting with the newest version; 409 (and the pin
        stays) if replicas could not load that version."""
        rt = runtime(request)
        kept = rt.store.versions()
        if kept:
            try:
                load_version(rt.store, kept[-1].version, rt.settings.model())
            except ModelLoadError as exc:
                raise HTTPException(409, f"the newest version cannot be served, so the pin stays: {exc}") from exc
        pointer = rt.store.unpin()
        rt.watcher.sync()
        return pointer_out(pointer)

    return router
