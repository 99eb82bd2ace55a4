from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.benchmark_scripts import load_benchmark, refusal
from trainer.research.drift import drift_events, drift_paths, drift_world, normalise, orthogonal_unit

SMALL = {"n_users": 20, "n_items": 30, "n_periods": 5, "events_per_period": 50}


def world(strength: float, regularity: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    w = drift_world(
        n_users=20,
        n_items=30,
        n_categories=3,
        dim=4,
        n_periods=6,
        strength=strength,
        regularity=regularity,
        item_spread=0.5,
        seed=seed,
    )
    return w.taste, w.style


def angles(path: np.ndarray) -> np.ndarray:
    """Degrees each row turns between consecutive periods: ``[periods − 1, n]``."""
    cosine = np.clip(np.sum(path[1:] * path[:-1], axis=-1), -1.0, 1.0)
    return np.degrees(np.arccos(cosine))


def test_the_same_seed_gives_the_same_table_and_another_seed_another() -> None:
    a, b, c = (drift_events(**SMALL, seed=s) for s in (7, 7, 8))
    for column in ("user", "item", "categories", "label", "timestamp"):
        assert np.array_equal(getattr(a, column), getattr(b, column))
    assert not np.array_equal(a.user, c.user)


def test_the_table_has_equal_periods_in_time_order() -> None:
    table = drift_events(**SMALL, period_seconds=100)
    assert len(table) == 5 * 50
    assert np.all(np.diff(table.timestamp) >= 0)
    assert np.array_equal(np.bincount(table.timestamp // 100), [50] * 5)


def test_strength_zero_is_stationary_whatever_the_regularity() -> None:
    for regularity in (0.0, 0.5, 1.0):
        taste, style = world(0.0, regularity)
        assert np.abs(taste - taste[0]).max() < 1e-12
        assert np.abs(style - style[0]).max() < 1e-12


def test_vectors_stay_unit_and_drift_grows_with_strength() -> None:
    slow, fast = world(2.0)[0], world(8.0)[0]
    assert np.allclose(np.linalg.norm(fast, axis=-1), 1.0)
    assert angles(fast).mean() > angles(slow).mean() > 0


def test_regularity_one_turns_each_user_by_the_strength_towards_its_trend() -> None:
    rng = np.random.default_rng(0)
    start = normalise(rng.normal(size=(5, 4)))
    trend = orthogonal_unit(start, rng)
    path = drift_paths(start, (start, trend), 10.0, 1.0, 4, rng)
    assert np.allclose(angles(path), 10.0)
    # in the plane of (start, trend), turned by 10° a period: cos and sin of 0°, 10°, 20°, 30°
    turned = np.radians([0.0, 10.0, 20.0, 30.0])[:, None]
    assert np.allclose(np.sum(path * start, axis=-1), np.cos(turned))
    assert np.allclose(np.sum(path * trend, axis=-1), np.sin(turned))


def test_a_random_walk_wanders_less_far_than_a_trend_with_the_same_steps() -> None:
    trend, walk = world(10.0, 1.0)[0], world(10.0, 0.0)[0]
    assert np.allclose(angles(walk), 10.0)  # the same step size
    assert angles(trend[[0, -1]]).mean() > angles(walk[[0, -1]]).mean() + 10.0


def test_one_seed_draws_the_same_world_at_every_strength() -> None:
    assert np.array_equal(world(0.0)[0][0], world(5.0, 0.3)[0][0])
    assert not np.array_equal(world(0.0, seed=1)[0][0], world(0.0)[0][0])
    a, b = drift_events(**SMALL, strength=0.0), drift_events(**SMALL, strength=5.0)
    assert np.array_equal(a.user, b.user) and np.array_equal(a.item, b.item)


def test_bad_drift_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="strength"):
        drift_events(**SMALL, strength=-1.0)
    with pytest.raises(ValueError, match="regularity"):
        drift_events(**SMALL, regularity=1.5)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--strengths", "0,-2"], "strength must be in [0, 90)"),
        (["--strengths", "0,abc"], "could not convert"),
        (["--regularity", "2"], "regularity must be in [0, 1]"),
        (["--seeds", "0"], "positive"),
        (["--events-per-period", "5"], "at least 10"),
        ([], "--out"),
    ],
)
def test_the_benchmark_refuses_bad_arguments_like_argparse(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = [] if argv == [] else ["--out", str(tmp_path)]
    assert message in refusal(load_benchmark("drift").main, [*argv, *out], capsys)
    assert not list(tmp_path.iterdir())  # nothing run, nothing written


def test_the_benchmark_replays_a_stream_without_drift_once_and_ends_with_the_json_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = ["--seeds", "1", "--users", "10", "--items", "12", "--events-per-period", "20"]
    assert load_benchmark("drift").main(["--strengths", "0", "--regularity", "1,0", *tiny, "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == str(tmp_path / "drift.json")
    points = json.loads((tmp_path / "drift.json").read_text())["points"]
    assert [(p["strength"], p["regularity"]) for p in points] == [(0.0, 1.0), (0.0, 0.0)]
    assert points[0]["methods"] == points[1]["methods"]  # one stream, replayed once
    assert set(points[0]["methods"]) == {"iu", "asmg-gru-multi", "asmg-linear"}
    assert np.isfinite(points[0]["methods"]["asmg-gru-multi"]["paired_auc_diff_mean"])
    assert [p.name for p in tmp_path.glob("periods-*.csv")] == ["periods-s0-r1.csv"]
    assert (tmp_path / "drift.png").read_bytes().startswith(b"\x89PNG")
