from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from trainer.core.config import ModelConfig, TrainConfig
from trainer.learning import native
from trainer.learning.learner import BaseLearner
from trainer.learning.meta import CoordinateGRU
from trainer.learning.updaters import make_updater
from trainer.research.encoding import EncodedLog


@pytest.fixture
def fresh_library(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """:func:`native.library` as on a machine that has not built it yet (its cache in ``tmp_path``)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    native.library.cache_clear()
    yield tmp_path
    native.library.cache_clear()


def test_the_library_is_built_once_into_the_cache(fresh_library: Path) -> None:
    lib = native.library()
    assert lib is not None
    (built,) = (fresh_library / "asmg" / "native").glob("gru-*.so")
    stamp = built.stat().st_mtime_ns
    native.library.cache_clear()  # a new process: loads what the first one built
    assert native.library() is not None
    assert built.stat().st_mtime_ns == stamp


def test_without_a_working_compiler_the_generator_runs_in_torch(
    fresh_library: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CC", "false")  # a compiler that fails
    with caplog.at_level(logging.WARNING, logger="trainer.learning.native"):
        assert native.library() is None
    assert "runs in torch" in caplog.text
    gru = CoordinateGRU({"item_emb": (5, 4)}, hidden=3)
    assert not gru.kernels
    out = gru.run("item_emb", torch.randn(3, 5, 4), torch.zeros(5, 4, 3))
    assert out.shape == (3, 5, 4) and torch.isfinite(out).all()


def test_kernels_are_used_only_when_asked_for_and_within_their_hidden_size(caplog: pytest.LogCaptureFixture) -> None:
    assert CoordinateGRU({"item_emb": (5, 4)}, hidden=4).kernels
    assert not CoordinateGRU({"item_emb": (5, 4)}, hidden=4, native_kernels=False).kernels
    with caplog.at_level(logging.WARNING, logger="trainer.learning.meta"):
        assert not CoordinateGRU({"item_emb": (5, 4)}, hidden=native.MAX_HIDDEN + 1).kernels
    assert f"up to {native.MAX_HIDDEN}" in caplog.text


def test_the_kernels_refuse_tensors_they_cannot_read() -> None:
    assert native.library() is not None
    x, h0 = torch.randn(2, 3, 5), torch.randn(3, 4, 5)
    weights = (torch.randn(3, 12), torch.randn(3, 12), torch.randn(3, 4, 8), torch.randn(3, 4, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="contiguous float32"):
        native.window_forward(False, x.transpose(1, 2).contiguous().transpose(1, 2), h0, (*weights, torch.randn(3)))
    with pytest.raises(ValueError, match="contiguous float32"):
        native.window_forward(False, x.double(), h0, (*weights, torch.randn(3)))


def test_asmg_serves_the_same_model_with_and_without_the_kernels(
    small_log: EncodedLog, small_config: ModelConfig, small_train: TrainConfig
) -> None:
    """Whole updates (meta training, state carry, generation) on both backends
    agree to float32 rounding, period after period."""
    size = len(small_log) // 5
    periods = [small_log.examples(i * size, (i + 1) * size) for i in range(5)]
    served = []
    for kernels in (True, False):
        updater = make_updater(
            "asmg-gru-multi", BaseLearner(small_config, small_train, 0), 0, {"window": 2, "native_kernels": kernels}
        )
        served.append([updater.update(p) for p in periods])
    for with_kernels, without in zip(*served, strict=True):
        for name in with_kernels:
            torch.testing.assert_close(with_kernels[name], without[name], rtol=1e-4, atol=1e-5)
