"""A seeded stream whose drift is set by two knobs: how fast and how regular.

Every user has a taste vector and every item a style vector, unit vectors of
``dim`` coordinates; a user clicks an item with probability
``σ(affinity · taste · style + bias)``. Each item belongs to one category and
starts near that category's centre.

Between two periods every vector takes one step on the unit sphere:

    x_{t+1} = normalise(x_t + tan(strength) · (r · trend(x_t) + (1 − r) · noise_t) / √(r² + (1 − r)²))

``trend`` is a fixed rotation per entity, in the plane of two orthonormal
vectors (e, d): from e, x turns towards d and on round the circle, at a
constant rate. A user turns in its own plane (e = its starting taste, d a
random direction orthogonal to it); an item turns in its category's plane
(e = the category's centre), so that a category's items move together and
the category stays a useful feature. ``noise_t`` is a fresh random unit
direction tangent to the sphere at x_t. ``strength`` is the angle, in
degrees, that a vector turns per period (exactly, for a user at r = 1 or 0;
about, otherwise); ``r`` is the regularity: 1 is a pure rotation (the same
turn every period, so the next period's vectors follow from the recent
ones), 0 a random walk (no direction to extrapolate); the division keeps the
step's expected size independent of ``r``. Strength 0 is a stationary
stream. A pure trend turns by 30 × strength degrees over the paper's 31
periods: past 180° it heads back to where it started, so strengths above
about 5 no longer mean more drift from the pre-training periods.

The random draws are split by purpose (the world, the users' noise, the
items' noise, the events), so that one seed gives the same users, items,
trends and events at every strength and regularity: the benchmark's
comparisons across strengths are paired as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.research.events import EventTable, make_event_table


@dataclass(frozen=True)
class DriftWorld:
    """The per-period vectors of a drifting world: period p uses ``taste[p]`` and ``style[p]``."""

    taste: np.ndarray  # [periods, users, dim] unit vectors
    style: np.ndarray  # [periods, items, dim] unit vectors
    category: np.ndarray  # [items] int


def check_strength(strength: float) -> None:
    # the step is tan(strength) long: 90° would be an infinite step
    if not 0.0 <= strength < 90.0:
        raise ValueError(f"strength must be in [0, 90) degrees per period, not {strength}")


def check_regularity(regularity: float) -> None:
    if not 0.0 <= regularity <= 1.0:
        raise ValueError(f"regularity must be in [0, 1], not {regularity}")


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def orthogonal_unit(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random unit vector orthogonal to each (unit) row of ``x``."""
    g = rng.normal(size=x.shape)
    return normalise(g - np.sum(g * x, axis=-1, keepdims=True) * x)


def streams(seed: int) -> list[np.random.Generator]:
    """Independent generators for the world, the users' noise, the items' noise and the events."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]


def drift_paths(
    start: np.ndarray,
    plane: tuple[np.ndarray, np.ndarray],
    strength: float,
    regularity: float,
    periods: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """``[periods, n, dim]``: the unit rows of ``start`` stepped ``periods − 1`` times.

    ``plane`` is ``(e, d)``, orthonormal rows: each row turns from e towards d.
    Noise is drawn at every step whatever the strength and regularity, so
    that one ``rng`` state gives the same noise sequence at all of them.
    """
    check_strength(strength)
    check_regularity(regularity)
    e, d = plane
    step = np.tan(np.radians(strength))
    mix = np.hypot(regularity, 1.0 - regularity)
    paths = [start]
    for _ in range(periods - 1):
        x = paths[-1]
        # the rotation's tangent: (d eᵀ − e dᵀ) x, of length 1 for x in the plane
        trend = d * np.sum(e * x, axis=-1, keepdims=True) - e * np.sum(d * x, axis=-1, keepdims=True)
        noise = orthogonal_unit(x, rng)
        paths.append(normalise(x + step * (regularity * trend + (1.0 - regularity) * noise) / mix))
    return np.stack(paths)


def drift_world(
    *,
    n_users: int,
    n_items: int,
    n_categories: int,
    dim: int,
    n_periods: int,
    strength: float,
    regularity: float,
    item_spread: float,
    seed: int,
) -> DriftWorld:
    world, user_noise, item_noise, _ = streams(seed)
    taste = normalise(world.normal(size=(n_users, dim)))
    user_plane = (taste, orthogonal_unit(taste, world))
    centre = normalise(world.normal(size=(n_categories, dim)))
    centre_d = orthogonal_unit(centre, world)
    category = world.integers(0, n_categories, size=n_items)
    style = normalise(centre[category] + item_spread * world.normal(size=(n_items, dim)) / np.sqrt(dim))
    item_plane = (centre[category], centre_d[category])
    return DriftWorld(
        taste=drift_paths(taste, user_plane, strength, regularity, n_periods, user_noise),
        style=drift_paths(style, item_plane, strength, regularity, n_periods, item_noise),
        category=category,
    )


def drift_events(
    *,
    n_users: int = 300,
    n_items: int = 400,
    n_categories: int = 8,
    dim: int = 4,
    n_periods: int = 31,
    events_per_period: int = 1500,
    strength: float = 10.0,
    regularity: float = 1.0,
    affinity: float = 4.0,
    bias: float = -0.5,
    item_spread: float = 0.5,
    period_seconds: int = 86_400,
    seed: int = 0,
) -> EventTable:
    """The events of :func:`drift_world`: each period, uniformly drawn (user, item) pairs."""
    world = drift_world(
        n_users=n_users,
        n_items=n_items,
        n_categories=n_categories,
        dim=dim,
        n_periods=n_periods,
        strength=strength,
        regularity=regularity,
        item_spread=item_spread,
        seed=seed,
    )
    rng = streams(seed)[3]
    users, items, labels, stamps = [], [], [], []
    for period in range(n_periods):
        u = rng.integers(0, n_users, size=events_per_period)
        i = rng.integers(0, n_items, size=events_per_period)
        logit = affinity * np.einsum("nd,nd->n", world.taste[period, u], world.style[period, i]) + bias
        labels.append(rng.random(events_per_period) < 1 / (1 + np.exp(-logit)))
        users.append(u)
        items.append(i)
        stamps.append(period * period_seconds + np.sort(rng.integers(0, period_seconds, size=events_per_period)))
    item_ids = np.concatenate(items)
    return make_event_table(
        user=[f"u{x}" for x in np.concatenate(users)],
        item=[f"i{x}" for x in item_ids],
        categories=[(f"c{world.category[x]}",) for x in item_ids],
        label=np.concatenate(labels).astype(np.float32),
        timestamp=np.concatenate(stamps),
    )
