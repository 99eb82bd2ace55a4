"""Negative sampling for implicit logs."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.research.events import DataError, EventTable, make_event_table
from trainer.research.sampling import add_sampled_negatives


def implicit_log(n_events: int, n_users: int, n_items: int, seed: int) -> EventTable:
    rng = np.random.default_rng(seed)
    items = rng.integers(n_items, size=n_events)
    return make_event_table(
        user=[f"u{u}" for u in rng.integers(n_users, size=n_events)],
        item=[f"i{i}" for i in items],
        categories=[(f"c{i % 4}",) for i in items],
        label=np.zeros(n_events),  # ignored: every logged action is a positive
        timestamp=np.sort(rng.integers(0, 50, size=n_events)),
    )


def check_structure(source: EventTable, out: EventTable) -> list[int]:
    """Walk the output; return the number of negatives after each positive."""
    categories = {str(i): tuple(c) for i, c in zip(source.item, source.categories, strict=True)}
    touched: dict[str, set[str]] = {}
    counts: list[int] = []
    row = 0
    for event in range(len(source)):
        user, item = str(source.user[event]), str(source.item[event])
        assert (out.user[row], out.item[row], out.label[row]) == (user, item, 1.0)
        assert out.timestamp[row] == source.timestamp[event]
        touched.setdefault(user, set()).add(item)
        row += 1
        negatives = []
        while row < len(out) and out.label[row] == 0.0:
            assert out.user[row] == user
            assert out.timestamp[row] == source.timestamp[event]
            assert out.item[row] not in touched[user]
            assert tuple(out.categories[row]) == categories[str(out.item[row])]
            negatives.append(out.item[row])
            row += 1
        assert len(set(negatives)) == len(negatives)
        counts.append(len(negatives))
    assert row == len(out)
    return counts


@pytest.mark.parametrize("per_positive", [1, 3])
def test_negatives_are_untouched_items_right_after_their_positive(per_positive: int) -> None:
    log = implicit_log(400, n_users=5, n_items=60, seed=1)
    out = add_sampled_negatives(log, np.random.default_rng(0), per_positive=per_positive)
    counts = check_structure(log, out)
    assert counts == [per_positive] * len(log)
    assert len(out) == (1 + per_positive) * len(log)
    assert out.label.sum() == len(log)
    assert bool((np.diff(out.timestamp) >= 0).all())


def test_same_event_item_is_never_its_own_negative() -> None:
    # Two items: the only possible negative is the one not touched yet.
    log = make_event_table(["u", "u"], ["a", "b"], [("x",), ("y",)], [1, 1], [1, 2])
    out = add_sampled_negatives(log, np.random.default_rng(7))
    assert list(out.item) == ["a", "b", "b"]
    assert list(out.label) == [1.0, 0.0, 1.0]
    assert [tuple(c) for c in out.categories] == [("x",), ("y",), ("y",)]


def test_user_who_touched_everything_gets_no_negatives() -> None:
    log = make_event_table(["u"] * 3, ["a", "b", "c"], [()] * 3, [1] * 3, [1, 2, 3])
    out = add_sampled_negatives(log, np.random.default_rng(0), per_positive=5)
    # a: b, c untouched -> both; b: only c; c: none left.
    assert check_structure(log, out) == [2, 1, 0]


def test_nearly_saturated_users_use_the_complement() -> None:
    items = [f"i{k}" for k in range(20)]
    log = make_event_table(["u"] * 20, items, [()] * 20, [1] * 20, list(range(20)))
    out = add_sampled_negatives(log, np.random.default_rng(0), per_positive=2)
    assert check_structure(log, out) == [2] * 18 + [1, 0]


def test_deterministic_under_seed() -> None:
    log = implicit_log(300, n_users=4, n_items=40, seed=2)
    a = add_sampled_negatives(log, np.random.default_rng(11), per_positive=2)
    b = add_sampled_negatives(log, np.random.default_rng(11), per_positive=2)
    c = add_sampled_negatives(log, np.random.default_rng(12), per_positive=2)
    assert list(a.item) == list(b.item)
    assert list(a.item) != list(c.item)


def test_zero_per_positive_keeps_only_positives() -> None:
    log = implicit_log(20, n_users=2, n_items=10, seed=3)
    out = add_sampled_negatives(log, np.random.default_rng(0), per_positive=0)
    assert list(out.item) == list(log.item)
    assert bool((out.label == 1.0).all())


def test_refuses_bad_input() -> None:
    log = implicit_log(5, n_users=2, n_items=10, seed=4)
    with pytest.raises(DataError):
        add_sampled_negatives(log, np.random.default_rng(0), per_positive=-1)
    backwards = make_event_table(["u", "u"], ["a", "b"], [(), ()], [1, 1], [1, 2]).take(np.array([1, 0]))
    with pytest.raises(DataError, match="sorted"):
        add_sampled_negatives(backwards, np.random.default_rng(0))


def test_empty_log() -> None:
    out = add_sampled_negatives(implicit_log(0, 1, 1, seed=0), np.random.default_rng(0))
    assert len(out) == 0
