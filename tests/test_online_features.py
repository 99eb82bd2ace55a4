"""The service encodes events exactly as the replay does: one history builder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.core.config import ModelConfig
from trainer.core.events import make_event_table
from trainer.core.features import ItemRef, encode_log, encode_stream
from trainer.core.history import HistoryBuilder
from trainer.research.synthetic import synthetic_events


def test_stream_encoding_matches_the_replay_encoding(small_config: ModelConfig) -> None:
    raw = synthetic_events(n_users=20, n_items=30, n_periods=3, events_per_period=100, seed=5)
    # distinct timestamps, so "earlier in time" and "earlier in the log" agree
    table = make_event_table(
        user=raw.user, item=raw.item, categories=raw.categories, label=raw.label, timestamp=np.arange(len(raw))
    )
    replay = encode_log(table, small_config).examples(0, len(table))
    events = [
        (str(u), str(i), c, int(y))
        for u, i, c, y in zip(table.user, table.item, table.categories, table.label, strict=True)
    ]
    builder: HistoryBuilder[ItemRef] = HistoryBuilder(small_config.history_length)
    # two periods streamed one after the other, the builder carried between them
    half = len(events) // 2
    first = encode_stream(events[:half], small_config, builder, 0)
    second = encode_stream(events[half:], small_config, builder, half)
    for name in ("user", "item", "item_cats", "hist_items", "hist_cats", "label"):
        streamed = torch.cat([getattr(first, name), getattr(second, name)])
        assert torch.equal(streamed, getattr(replay, name)), name


def test_history_builder_state_round_trip() -> None:
    builder: HistoryBuilder[ItemRef] = HistoryBuilder(3)
    for seq in range(10):
        builder.add(f"u{seq % 2}", seq, (seq, (seq % 4,)))
    restored: HistoryBuilder[ItemRef] = HistoryBuilder(3)
    restored.load_state_dict(builder.state_dict())
    for user in ("u0", "u1", "nobody"):
        assert restored.history(user, 100) == builder.history(user, 100)
    assert restored.history("u0", 100) == [(4, (0,)), (6, (2,)), (8, (0,))]


@pytest.mark.parametrize("length", [0, 2])
def test_stream_history_excludes_the_event_itself(length: int) -> None:
    config = ModelConfig(user_buckets=64, item_buckets=64, category_buckets=8, history_length=length)
    builder: HistoryBuilder[ItemRef] = HistoryBuilder(length)
    ex = encode_stream([("u", "a", ("c",), 1), ("u", "b", (), 1), ("u", "c", (), 0)], config, builder, 0)
    assert ex.hist_items.shape == (3, length)
    if length:
        assert (ex.hist_items[0] == -1).all()  # nothing before the first click
        assert ex.hist_items[1, -1] == ex.item[0] and ex.hist_items[1, 0] == -1
        assert ex.hist_items[2].tolist() == [ex.item[0].item(), ex.item[1].item()]
