"""``asmg admin``: the admin routes from a terminal, for an operator.

Talks to the API at ``ASMG_API_URL`` with ``ASMG_ADMIN_TOKEN``, over the
standard library's HTTP client (nothing to install beside the service), and
prints the API's JSON answer. Exit status: 0 on success, 1 when the API
answered with an error (its detail printed), 2 when it could not be reached.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from trainer.core.settings import Settings

TIMEOUT_SECONDS = 30.0  # a rollover answers at once; only a stalled store takes long


class Unreachable(Exception):
    """The API did not answer at all."""


class Refused(Exception):
    """The API answered with an error status."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


def call(settings: Settings, method: str, path: str, timeout: float = TIMEOUT_SECONDS) -> Any:
    """The JSON answer of one admin route; :class:`Refused` or :class:`Unreachable` otherwise."""
    url = settings.api_url.rstrip("/") + path
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if settings.admin_token is not None:
        request.add_header("Authorization", f"Bearer {settings.admin_token.get_secret_value()}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise Refused(exc.code, _detail(exc)) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unreachable(f"cannot reach the API at {settings.api_url} (ASMG_API_URL): {reason}") from None


def _detail(error: urllib.error.HTTPError) -> str:
    try:
        detail = json.loads(error.read()).get("detail")
    except (ValueError, AttributeError):
        detail = None
    if error.code in (401, 403):
        hint = "set ASMG_ADMIN_TOKEN" if error.code == 401 else "ASMG_ADMIN_TOKEN does not match the API's"
        return f"{detail or 'refused'} ({hint})"
    return str(detail) if detail is not None else error.reason


# command → (method, path); a version number fills in {version}
ROUTES: dict[str, tuple[str, str]] = {
    "status": ("GET", "/admin/status"),
    "rollover": ("POST", "/admin/rollover"),
    "models": ("GET", "/admin/models"),
    "activate": ("POST", "/admin/models/{version}/activate"),
    "unpin": ("POST", "/admin/unpin"),
}


def run_admin(args: argparse.Namespace) -> int:
    settings = Settings()
    method, path = ROUTES[args.admin_command]
    try:
        answer = call(settings, method, path.format(version=getattr(args, "version", "")))
    except Unreachable as exc:
        print(f"asmg admin: error: {exc}", file=sys.stderr)
        return 2
    except Refused as exc:
        print(f"asmg admin {args.admin_command}: the API refused: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2, sort_keys=True))
    return 0


def add_admin_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("admin", help="operate a running service through its admin API (ASMG_API_URL, ASMG_ADMIN_TOKEN)")
    commands = p.add_subparsers(dest="admin_command", required=True)
    commands.add_parser("status", help="the open period, trained-through period, served version, trainer status")
    commands.add_parser("rollover", help="close the open period now and queue it for training")
    commands.add_parser("models", help="the kept model versions and which one the pointer names")
    activate = commands.add_parser("activate", help="serve version V and pin it (roll back or forward)")
    activate.add_argument("version", type=_version, metavar="V")
    commands.add_parser("unpin", help="follow new versions again")
    p.set_defaults(handler=run_admin)


def _version(value: str) -> int:
    number = int(value) if value.isdigit() else 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"a version is a number from 1, not {value!r}")
    return number
