"""`asmg admin` against a real server: every command, and the errors an operator meets."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest

from app.cli import main
from tests.service import TOKEN, post_period, running_server, small_settings, traffic, wait_for


def admin(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, object, str]:
    """Exit status, parsed JSON output (None if none) and stderr of one `asmg admin` command."""
    code = main(["admin", *args])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def test_an_operator_rolls_over_inspects_rolls_back_and_unpins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = small_settings(tmp_path / "state", trainer_in_process=True)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        monkeypatch.setenv("ASMG_API_URL", url)
        monkeypatch.setenv("ASMG_ADMIN_TOKEN", TOKEN)

        code, status, _ = admin(capsys, "status")
        assert code == 0 and isinstance(status, dict)
        assert status["open_period"] == 1 and status["trained_through"] == 0

        code, _, err = admin(capsys, "rollover")  # nothing logged yet
        assert code == 1 and "409" in err

        post_period(client, traffic(1)[0])
        code, rolled, _ = admin(capsys, "rollover")
        assert code == 0 and rolled == {"closed_period": 1, "open_period": 2, "queued_periods": 1}

        def trained() -> bool:
            code, status, _ = admin(capsys, "status")
            return code == 0 and isinstance(status, dict) and status["trained_through"] == 1

        wait_for(trained, what="period 1 trained")
        code, models, _ = admin(capsys, "models")
        assert code == 0 and isinstance(models, list)
        assert [m["version"] for m in models] == [1, 2] and models[1]["serving"]

        code, pointer, _ = admin(capsys, "activate", "1")
        assert code == 0 and pointer == {"version": 1, "pinned": True}
        code, _, err = admin(capsys, "activate", "99")
        assert code == 1 and "404" in err
        code, pointer, _ = admin(capsys, "unpin")
        assert code == 0 and pointer == {"version": 2, "pinned": False}


def test_a_wrong_or_missing_token_is_refused_with_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_server(small_settings(tmp_path / "state")) as url:
        monkeypatch.setenv("ASMG_API_URL", url)
        monkeypatch.setenv("ASMG_ADMIN_TOKEN", "not-the-token")
        code, out, err = admin(capsys, "status")
        assert code == 1 and out is None and "403" in err and "does not match" in err
        monkeypatch.delenv("ASMG_ADMIN_TOKEN")
        code, out, err = admin(capsys, "models")
        assert code == 1 and out is None and "401" in err and "set ASMG_ADMIN_TOKEN" in err


def test_an_unreachable_api_exits_2_naming_the_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("ASMG_API_URL", url)
    code, out, err = admin(capsys, "unpin")
    assert code == 2 and out is None and f"cannot reach the API at {url}" in err


@pytest.mark.parametrize("version", ["0", "x", "-3"])
def test_activate_wants_a_version_number(version: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["admin", "activate", version])
    assert exit_info.value.code == 2 and "a version is a number from 1" in capsys.readouterr().err


def test_an_api_url_without_a_scheme_is_refused_before_any_request(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ASMG_API_URL", "localhost:8000")
    code, out, err = admin(capsys, "status")
    assert code == 2 and out is None and "api_url" in err
