"""Equal-count and calendar periods."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.research.events import DataError, EventTable, make_event_table
from trainer.research.periods import period_index, split_by_time, split_equal_count

DAY = 86_400


def table_at(timestamps: list[int]) -> EventTable:
    n = len(timestamps)
    return make_event_table(
        user=[f"u{i % 3}" for i in range(n)],
        item=[f"i{i}" for i in range(n)],
        categories=[("c",)] * n,
        label=[i % 2 for i in range(n)],
        timestamp=timestamps,
    )


def test_equal_count_sizes_and_order() -> None:
    table = table_at(list(range(10)))
    parts = split_equal_count(table, 3)
    assert [len(p) for p in parts] == [4, 3, 3]
    assert [list(p.item) for p in parts] == [
        ["i0", "i1", "i2", "i3"],
        ["i4", "i5", "i6"],
        ["i7", "i8", "i9"],
    ]


def test_equal_count_paper_setting_covers_everything_once() -> None:
    rng = np.random.default_rng(3)
    table = table_at(sorted(rng.integers(0, 10_000, size=1_000).tolist()))
    parts = split_equal_count(table, 31)
    sizes = [len(p) for p in parts]
    assert len(parts) == 31
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == len(table)
    assert np.array_equal(np.concatenate([p.item for p in parts]), table.item)


def test_equal_count_one_row_per_period() -> None:
    assert [len(p) for p in split_equal_count(table_at([1, 2, 3]), 3)] == [1, 1, 1]


@pytest.mark.parametrize("n_periods", [0, -1, 4])
def test_equal_count_refuses_impossible_counts(n_periods: int) -> None:
    with pytest.raises(DataError):
        split_equal_count(table_at([1, 2, 3]), n_periods)


def unsorted_table() -> EventTable:
    # Built directly: make_event_table would sort it.
    categories = np.empty(2, dtype=object)
    categories[:] = [(), ()]
    return EventTable(
        user=np.array(["a", "b"], dtype=object),
        item=np.array(["x", "y"], dtype=object),
        categories=categories,
        label=np.zeros(2, dtype=np.float32),
        timestamp=np.array([5, 1], dtype=np.int64),
    )


def test_splits_refuse_unsorted_tables() -> None:
    with pytest.raises(DataError, match="sorted"):
        split_equal_count(unsorted_table(), 2)
    with pytest.raises(DataError, match="sorted"):
        split_by_time(unsorted_table(), DAY)


def test_period_index_arithmetic() -> None:
    assert period_index(0, DAY, 0) == 0
    assert period_index(DAY - 1, DAY, 0) == 0
    assert period_index(DAY, DAY, 0) == 1
    assert period_index(10 * DAY + 5, DAY, 3 * DAY) == 7
    assert period_index(-1, DAY, 0) == -1
    with pytest.raises(DataError):
        period_index(5, 0, 0)


def test_split_by_time_days_from_utc_midnight_with_empty_days() -> None:
    start = 1_000 * DAY  # a UTC midnight
    stamps = [start + 3_600, start + DAY - 1, start + DAY, start + 3 * DAY + 7]
    parts = split_by_time(table_at(stamps), DAY)
    assert [len(p) for p in parts] == [2, 1, 0, 1]
    for index, part in enumerate(parts):
        for ts in part.timestamp:
            assert period_index(int(ts), DAY, start) == index


def test_split_by_time_explicit_origin() -> None:
    parts = split_by_time(table_at([10, 11, 25, 26]), 10, origin=5)
    assert [list(p.timestamp) for p in parts] == [[10, 11], [], [25, 26]]


def test_split_by_time_refuses_bad_input() -> None:
    with pytest.raises(DataError, match="origin"):
        split_by_time(table_at([10, 20]), 10, origin=15)
    with pytest.raises(DataError):
        split_by_time(table_at([10, 20]), 0)


def test_split_by_time_empty_table() -> None:
    assert split_by_time(table_at([]), DAY) == []
