"""Training sees the histories serving saw: the store logs each event with its user's click
list, the trainer encodes those snapshots, and the result is what the replay computes offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.core.config import ModelConfig
from trainer.core.store import Interaction, Store
from trainer.loop.worker import encode_stream
from trainer.research.encoding import encode_log
from trainer.research.events import make_event_table
from trainer.research.synthetic import synthetic_events


def test_logged_histories_encode_as_the_replay_encodes(store: Store, small_config: ModelConfig) -> None:
    raw = synthetic_events(n_users=20, n_items=30, n_periods=3, events_per_period=100, seed=5)
    # distinct timestamps, so "earlier in time" and "earlier in the log" agree
    table = make_event_table(
        user=raw.user, item=raw.item, categories=raw.categories, label=raw.label, timestamp=np.arange(len(raw))
    )
    events = [
        Interaction(str(u), str(i), tuple(c), int(y), float(t))
        for u, i, c, y, t in zip(table.user, table.item, table.categories, table.label, table.timestamp, strict=True)
    ]
    # batches of uneven sizes over two periods, as clients would post them
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(np.arange(1, len(events)), size=12, replace=False)).tolist()
    for n, (start, stop) in enumerate(zip([0, *cuts], [*cuts, len(events)], strict=True)):
        store.append(events[start:stop], small_config.history_length)
        if n == 6:
            store.rollover()
    logged = store.read_period(1) + store.read_period(2)
    streamed = encode_stream(logged, small_config)
    replay = encode_log(table, small_config).examples(0, len(table))
    for name in ("user", "item", "item_cats", "hist_items", "hist_cats", "label"):
        assert torch.equal(getattr(streamed, name), getattr(replay, name)), name


@pytest.mark.parametrize("length", [0, 2])
def test_stream_history_excludes_the_event_itself(store: Store, length: int) -> None:
    config = ModelConfig(user_buckets=64, item_buckets=64, category_buckets=8, history_length=length)
    store.append([Interaction("u", "a", ("c",), 1, 0.0), Interaction("u", "b", (), 1, 1.0)], length)
    store.append([Interaction("u", "c", (), 0, 2.0)], length)
    ex = encode_stream(store.read_period(1), config)
    assert ex.hist_items.shape == (3, length)
    if length:
        assert (ex.hist_items[0] == -1).all()  # nothing before the first click
        assert ex.hist_items[1, -1] == ex.item[0] and ex.hist_items[1, 0] == -1
        assert ex.hist_items[2].tolist() == [ex.item[0].item(), ex.item[1].item()]
