"""``GET /status``: a page for operators. One static file with its script inline: no build step,
nothing fetched from elsewhere; it reads the public health routes, and the admin routes with
the token the operator enters (kept in the tab's session storage)."""

from __future__ import annotations

from importlib import resources

from app.routing import Reply, Route

HTML = "text/html; charset=utf-8"


def status_routes() -> list[Route]:
    page = resources.files("app").joinpath("static", "status.html").read_bytes()

    async def status(runtime: object) -> bytes:
        return page

    return [Route("GET", "/status", status, Reply(None, "", HTML), documented=False)]
