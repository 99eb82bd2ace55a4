"""A seeded stream of users whose tastes drift and come back.

Each item belongs to one category. A user's click probability for an item is
``σ(a·(taste_u · style_i) + b·season(t)[category] + bias)`` where ``season``
moves smoothly through the categories and repeats with a fixed cycle, so the
best model for the next period is predictable from the recent sequence of
models: what ASMG is built to exploit and plain IU lags behind.
"""

from __future__ import annotations

import numpy as np

from trainer.research.events import EventTable, make_event_table


def synthetic_events(
    *,
    n_users: int = 300,
    n_items: int = 400,
    n_categories: int = 8,
    n_periods: int = 31,
    events_per_period: int = 1500,
    cycle: int = 12,
    taste_weight: float = 1.5,
    season_weight: float = 3.0,
    period_seconds: int = 86_400,
    seed: int = 0,
) -> EventTable:
    rng = np.random.default_rng(seed)
    dim = 4
    taste = rng.normal(size=(n_users, dim)) / np.sqrt(dim)
    style = rng.normal(size=(n_items, dim))
    category = rng.integers(0, n_categories, size=n_items)
    users, items, labels, stamps = [], [], [], []
    for period in range(n_periods):
        u = rng.integers(0, n_users, size=events_per_period)
        i = rng.integers(0, n_items, size=events_per_period)
        # the season is a smooth bump over the categories that travels around them
        ts = period * period_seconds + np.sort(rng.integers(0, period_seconds, size=events_per_period))
        phase = 2 * np.pi * (ts / period_seconds) / cycle
        angle = 2 * np.pi * category[i] / n_categories
        season = np.cos(angle - phase)
        logit = taste_weight * np.einsum("nd,nd->n", taste[u], style[i]) + season_weight * season - 0.5
        labels.append(rng.random(events_per_period) < 1 / (1 + np.exp(-logit)))
        users.append(u)
        items.append(i)
        stamps.append(ts)
    item_ids = np.concatenate(items)
    return make_event_table(
        user=[f"u{x}" for x in np.concatenate(users)],
        item=[f"i{x}" for x in item_ids],
        categories=[(f"c{category[x]}",) for x in item_ids],
        label=np.concatenate(labels).astype(np.float32),
        timestamp=np.concatenate(stamps),
    )
