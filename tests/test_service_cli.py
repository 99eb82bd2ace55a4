"""The service's commands: the demo (README's first command), the trainer, bad settings."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from app.cli import main
from tests.service import small_settings
from trainer.core.model import load_checkpoint
from trainer.core.store import open_store
from trainer.core.store.base import Interaction


def test_demo_serves_generated_models_that_beat_iu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--periods", "8", "--state-dir", str(tmp_path)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == list(range(1, 9))
    assert [r[2] for r in rows] == [f"v{n}" for n in range(1, 9)]  # each period served by the newest version
    generated = [r for r in rows if "generated" in r[-1]]
    assert generated, "the demo never served a generated model"
    # periods served by a generated model: it beat what IU would have served, on the same traffic
    gains = [float(r[3]) - float(r[5]) for prev, r in itertools.pairwise(rows) if prev[-1] == "generated"]
    assert gains and sum(gains) / len(gains) > 0.01
    assert (tmp_path / "store.sqlite3").is_file()


def test_trainer_once_trains_waiting_periods(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = small_settings(tmp_path / "state", method="iu")
    store = open_store(settings)
    store.append([Interaction("u", "i", ("c",), 1, 1.0), Interaction("u", "j", (), 0, 2.0)], 5)
    store.rollover()
    store.close()
    monkeypatch.setenv("ASMG_STATE_DIR", str(settings.state_dir))
    for name in ("user_buckets", "item_buckets", "category_buckets", "history_length", "method"):
        monkeypatch.setenv(f"ASMG_{name.upper()}", str(getattr(settings, name)))
    assert main(["trainer", "--once"]) == 0
    assert "'period': 1" in capsys.readouterr().out
    store = open_store(settings)
    assert store.trained_through() == 1 and [v.version for v in store.versions()] == [1, 2]
    store.close()


def test_production_without_a_token_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ASMG_ENVIRONMENT", "production")
    assert main(["serve"]) == 2
    assert "ASMG_ADMIN_TOKEN" in capsys.readouterr().err


def test_pretrained_initial_model_is_served_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = small_settings(tmp_path / "state")
    for name in ("user_buckets", "item_buckets", "category_buckets", "history_length"):
        monkeypatch.setenv(f"ASMG_{name.upper()}", str(getattr(settings, name)))
    checkpoint = tmp_path / "theta0.pt"
    assert main(["pretrain", "--synthetic", "--epochs", "1", "--out", str(checkpoint)]) == 0
    monkeypatch.setenv("ASMG_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("ASMG_INITIAL_MODEL", str(checkpoint))
    assert main(["trainer", "--once"]) == 0  # publishes the initial model, nothing to train
    store = open_store(settings)
    try:
        (first,) = store.versions()
        weights = store.weights(first.version)
    finally:
        store.close()
    _, served, _ = load_checkpoint(weights or b"")
    _, pretrained, meta = load_checkpoint(checkpoint.read_bytes())
    assert meta["pretrained_on"] == "synthetic"
    assert all(torch.equal(served[k], pretrained[k]) for k in pretrained)


def test_initial_model_of_another_shape_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "theta0.pt"
    monkeypatch.setenv("ASMG_USER_BUCKETS", "64")
    monkeypatch.setenv("ASMG_ITEM_BUCKETS", "64")
    assert main(["pretrain", "--synthetic", "--epochs", "1", "--out", str(checkpoint)]) == 0
    monkeypatch.setenv("ASMG_USER_BUCKETS", "128")
    monkeypatch.setenv("ASMG_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("ASMG_INITIAL_MODEL", str(checkpoint))
    assert main(["trainer", "--once"]) == 2
    assert "ASMG_INITIAL_MODEL has model shape" in capsys.readouterr().err
