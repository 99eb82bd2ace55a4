from __future__ import annotations

import numpy as np
import pytest

from trainer.research.history import HistoryBuilder, build_histories


def brute_force(users: list[str], ts: np.ndarray, labels: np.ndarray, length: int, i: int) -> list[int]:
    earlier = [j for j in range(len(users)) if users[j] == users[i] and ts[j] < ts[i] and labels[j] == 1]
    return earlier[-length:]


def test_history_is_strictly_earlier_positives_of_the_same_user() -> None:
    rng = np.random.default_rng(0)
    n = 400
    users = [f"u{x}" for x in rng.integers(0, 7, n)]
    ts = np.sort(rng.integers(0, 60, n))  # many equal timestamps on purpose
    labels = (rng.random(n) < 0.6).astype(np.float32)
    hist = build_histories(users, ts, labels, length=5)
    for i in range(n):
        got = [int(j) for j in hist[i] if j >= 0]
        assert got == brute_force(users, ts, labels, 5, i)
        assert i not in got
        assert all(ts[j] < ts[i] for j in got)


def test_padding_is_on_the_left_and_marked_minus_one() -> None:
    hist = build_histories(["a", "a", "a"], np.array([1, 2, 3]), np.array([1.0, 1.0, 0.0]), length=4)
    assert hist.tolist() == [[-1, -1, -1, -1], [-1, -1, -1, 0], [-1, -1, 0, 1]]


def test_streaming_builder_keeps_enough_when_many_share_a_timestamp() -> None:
    builder: HistoryBuilder[int] = HistoryBuilder(length=2)
    for ref in range(3):
        builder.add("u", 1, ref)
    for ref in range(3, 40):
        builder.add("u", 5, ref)
    # a query at t=5 must still see the two latest positives from t=1
    assert builder.history("u", 5) == [1, 2]
    assert builder.history("u", 6) == [38, 39]


def test_streaming_builder_refuses_time_travel() -> None:
    builder: HistoryBuilder[int] = HistoryBuilder(length=2)
    builder.add("u", 5, 0)
    with pytest.raises(ValueError):
        builder.add("u", 4, 1)
