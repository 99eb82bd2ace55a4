from __future__ import annotations

import pytest
from pydantic import ValidationError

from trainer.core.settings import Settings


def test_settings_come_from_asmg_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASMG_HIDDEN", "40,5")
    monkeypatch.setenv("ASMG_METHOD", "iu")
    monkeypatch.setenv("ASMG_REDIS_URL", "redis://example:6379/0")
    s = Settings()
    assert s.model().hidden == (40, 5) and s.method == "iu" and not s.embedded
    assert not s.runs_trainer_in_process  # on Redis the trainer is its own process by default


def test_embedded_default_runs_the_trainer_in_process() -> None:
    assert Settings().embedded and Settings().runs_trainer_in_process


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"environment": "production"}, "ASMG_ADMIN_TOKEN"),
        ({"method": "sgd"}, "method"),
        ({"method": "asmg-gru-full"}, "grows without bound"),
        ({"rollover_cron": "every day"}, "rollover_cron"),
        ({"rollover_cron": "0 * * * *", "rollover_interval_seconds": 60}, "not both"),
        ({"max_items": 0}, "max_items"),
        ({"port": 70000}, "port"),
        ({"meta_blend": 0}, "meta_blend"),
        ({"meta_blend": 3}, "meta_blend"),
    ],
)
def test_bad_settings_are_refused_by_name(values: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**values)  # type: ignore[arg-type]


def test_production_with_a_token_starts() -> None:
    assert Settings(environment="production", admin_token="s3cret").admin_token is not None  # type: ignore[arg-type]
