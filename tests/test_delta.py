"""Delta publishing: a version as the rows it changed on the version before, on both stores.

Every test drives the registry's rules (trainer.core.registry) against a real store, and the
replica's side through the SwapWatcher: a replica serves only whole models whose digest matches.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from app.serving import ModelHolder, ServedModel, SwapWatcher
from tests.service import small_settings
from tests.test_worker import feed
from trainer.core.config import ModelConfig
from trainer.core.delta import combine, model_digest, read_blob, tensor_digests
from trainer.core.model import Params, seeded_model
from trainer.core.registry import (
    ModelLoadError,
    Published,
    full_turn,
    keep_for,
    load_version,
    publication,
    resolve_version,
)
from trainer.core.store import LocalStore, RedisStore, Store
from trainer.core.store.base import NewVersion
from trainer.loop.worker import PeriodTrainer

CONFIG = ModelConfig(user_buckets=4096, item_buckets=4096, category_buckets=64, history_length=5, hidden=(8, 4))


def same(a: Params, b: Params) -> bool:
    """Bit for bit."""
    return a.keys() == b.keys() and all(
        a[n].dtype == b[n].dtype and a[n].shape == b[n].shape and torch.equal(a[n].view(-1), b[n].view(-1)) for n in a
    )


def step(params: Params, seed: int, rows: int = 20) -> Params:
    """The next model: a few rows of each table and every dense tensor changed."""
    gen = torch.Generator().manual_seed(seed)
    out = {n: t.clone() for n, t in params.items()}
    for name in ("user_emb", "item_emb", "cat_emb"):
        index = torch.randperm(len(out[name]), generator=gen)[:rows]
        out[name][index] += torch.randn(len(index), out[name].shape[1], generator=gen)
    for name in out:
        if name.startswith("mlp."):
            out[name] += 0.01 * torch.randn(out[name].shape, generator=gen)
    return out


class Publisher:
    """The trainer's publishing rules (as trainer/loop/worker.py applies them) without the training."""

    def __init__(self, store: Store, every: int, keep: int, follow_keep: bool = True) -> None:
        self.store, self.every, self.keep, self.follow_keep = store, every, keep, follow_keep
        self.published: Published | None = None
        self.models: dict[int, Params] = {}

    def publish(self, params: Params, *, base_ok: bool = True) -> NewVersion:
        number = max((v.version for v in self.store.versions()), default=0) + 1
        base = self.published if base_ok and not full_turn(number, self.every) else None
        through = self.store.trained_through() + 1
        version, digests = publication(CONFIG, params, through, "iu", base=base)
        pointer = self.store.pointer()
        keep = keep_for(number, self.keep, self.every, pointer.version if pointer.pinned else None)
        info = self.store.commit_period(version, b"state", keep if self.follow_keep else self.keep)
        assert info.version == number
        self.published = Published(number, {n: t.clone() for n, t in params.items()}, digests)
        self.models[number] = params
        return version


def initial(store: Store) -> Params:
    params = seeded_model(CONFIG, 0).params()
    version, _ = publication(CONFIG, params, 0, "initial")
    assert store.publish_initial(version) is not None
    return params


def watcher(store: Store) -> SwapWatcher:
    return SwapWatcher(store, ModelHolder(), CONFIG, poll_seconds=60, on_failure=lambda v, why: None)


def served(w: SwapWatcher) -> ServedModel:
    assert w.holder.current is not None
    return w.holder.current


def test_a_delta_round_trips_exactly_and_is_small(store: Store) -> None:
    params = initial(store)
    pub = Publisher(store, every=10, keep=10)
    pub.published = Published(1, params, tensor_digests(params))
    nxt = step(params, 1)
    version = pub.publish(nxt)
    full, _ = publication(CONFIG, nxt, 1, "iu")
    assert version.base == 1 and full.base is None
    assert version.digest == full.digest == model_digest(nxt)
    assert len(version.weights) < len(full.weights) / 10
    delta = read_blob(version.weights)
    assert not isinstance(delta, tuple)
    assert {n: len(i) for n, (i, _) in delta.rows.items()} == {"user_emb": 20, "item_emb": 20, "cat_emb": 20}
    info, loaded = load_version(store, 2, CONFIG)  # from the full snapshot (version 1) up
    assert same(loaded, nxt) and info.version == 2
    # a replica serving version 1 applies it; the tensors it serves stay as they were
    w = watcher(store)
    store.activate(1)
    assert w.sync() and served(w).version == 1
    before = served(w)
    kept = {n: t.clone() for n, t in before.params.items()}
    store.unpin()
    assert w.sync()
    now = served(w)
    assert now.version == 2 and now.deltas == 1 and same(now.params, nxt)
    assert same(before.params, kept)
    assert now.params["user_emb"] is not before.params["user_emb"]
    assert w.delta_loads == 1


def test_a_period_that_changes_most_rows_is_published_whole(store: Store) -> None:
    params = initial(store)
    pub = Publisher(store, every=10, keep=10)
    pub.published = Published(1, params, tensor_digests(params))
    version = pub.publish(step(params, 1, rows=3000))
    assert version.base is None and isinstance(read_blob(version.weights), tuple)
    assert same(load_version(store, 2, CONFIG)[1], pub.models[2])


def test_full_snapshots_come_every_k_versions_and_every_kept_version_loads(store: Store) -> None:
    params = initial(store)
    pub = Publisher(store, every=3, keep=4)
    pub.published = Published(1, params, tensor_digests(params))
    for k in range(2, 15):
        params = step(params, k)
        pub.publish(params)
    bases = {n: read_blob(store.weights(n) or b"") for n in range(1, 15) if store.weights(n) is not None}
    kinds = {n: "full" if isinstance(b, tuple) else b.base for n, b in bases.items()}
    # versions 1, 4, 7, 10, 13 are full; the others deltas of the one before
    assert all(kinds[n] == ("full" if (n - 1) % 3 == 0 else n - 1) for n in kinds)
    # the newest 4 (11-14) and back to 10, the full snapshot the oldest of them needs
    assert sorted(kinds) == [10, 11, 12, 13, 14]
    for n in kinds:
        assert same(load_version(store, n, CONFIG)[1], pub.models[n])


def test_without_keeping_the_chain_a_kept_delta_could_not_load(store: Store) -> None:
    # the counter-case keep_for prevents: trimming to the newest 4 drops version 10, which 11 and 12 need
    params = initial(store)
    pub = Publisher(store, every=3, keep=4, follow_keep=False)
    pub.published = Published(1, params, tensor_digests(params))
    for k in range(2, 15):
        params = step(params, k)
        pub.publish(params)
    assert [v.version for v in store.versions()] == [11, 12, 13, 14]
    with pytest.raises(ModelLoadError, match="version 10 is not in the registry"):
        load_version(store, 11, CONFIG)


def test_keep_for_keeps_a_pinned_deltas_chain() -> None:
    assert keep_for(20, 4, 3, None) == 5  # the oldest kept, 17, is a delta of the full snapshot 16: 16..20
    assert keep_for(20, 4, 1, None) == 4
    assert keep_for(20, 4, 3, pinned=8) == 14  # 8 needs 7 (full): 7..20
    assert keep_for(3, 10, 5, None) == 10
    assert [n for n in range(1, 12) if full_turn(n, 5)] == [1, 6, 11]


def test_a_pinned_delta_stays_loadable_while_pinned(store: Store) -> None:
    params = initial(store)
    pub = Publisher(store, every=3, keep=3)
    pub.published = Published(1, params, tensor_digests(params))
    for k in range(2, 7):
        params = step(params, k)
        pub.publish(params)
    store.activate(6)  # a delta of 5, of the full snapshot 4
    for k in range(7, 14):
        params = step(params, k)
        pub.publish(params)
    assert {4, 5, 6} <= {v.version for v in store.versions()}
    fresh = watcher(store)
    assert fresh.sync() and served(fresh).version == 6 and same(served(fresh).params, pub.models[6])


def tampered(store: Store, version: NewVersion, change: str) -> NewVersion:
    """``version`` with its delta changed after the trainer made it, its sha256 made to match again
    (a blob the store holds intact, but not what its digest names)."""
    state = torch.load(io.BytesIO(version.weights), weights_only=True)
    if change == "row":
        state["rows"]["item_emb"]["values"][0, 0] += 1.0
    elif change == "digest":
        state["digest"] = "0" * 64
    elif change == "base":
        state["base"] = state["base"] - 1
    elif change == "nan":
        state["rows"]["user_emb"]["values"][0, 0] = float("nan")
    elif change == "index":
        state["rows"]["user_emb"]["index"][0] = 10**6
    buffer = io.BytesIO()
    torch.save(state, buffer)
    blob = buffer.getvalue()
    return replace(version, weights=blob, sha256=hashlib.sha256(blob).hexdigest())


@pytest.mark.parametrize("change", ["row", "digest", "base", "nan", "index"])
def test_a_bad_delta_is_never_served(store: Store, change: str) -> None:
    params = initial(store)
    w = watcher(store)
    assert w.sync() and served(w).version == 1
    pub = Publisher(store, every=10, keep=10)
    pub.published = Published(1, params, tensor_digests(params))
    pub.publish(step(params, 1))  # version 2, good
    assert w.sync() and served(w).version == 2
    good = step(pub.models[2], 2)
    made, _ = publication(CONFIG, good, 2, "iu", base=pub.published)
    failures: list[tuple[int, str]] = []
    w.on_failure = lambda version, why: failures.append((version, why))
    info = store.commit_period(tampered(store, made, change), b"state", 10)
    assert not w.sync()
    assert served(w).version == 2 and same(served(w).params, pub.models[2])
    assert [v for v, _ in failures] == [info.version] and w.load_error
    with pytest.raises(ModelLoadError):
        load_version(store, info.version, CONFIG)  # nor from its full snapshot
    # a sha256 that does not match the blob is refused before anything is read
    middle = len(made.weights) // 2
    broken = replace(
        made, weights=made.weights[:middle] + bytes([made.weights[middle] ^ 1]) + made.weights[middle + 1 :]
    )
    bad = store.commit_period(replace(broken, trained_through=3), b"state", 10)
    with pytest.raises(ModelLoadError, match="sha256"):
        resolve_version(store, bad.version, CONFIG)


def test_a_delta_of_another_model_is_refused(store: Store) -> None:
    params = initial(store)
    other = step(params, 99)
    made, _ = publication(CONFIG, step(other, 1), 1, "iu", base=Published(1, other, tensor_digests(other)))
    assert made.base == 1
    store.commit_period(made, b"state", 10)
    with pytest.raises(ModelLoadError, match="another model"):
        load_version(store, 2, CONFIG)
    w = watcher(store)
    store.activate(1)
    assert w.sync()
    store.unpin()
    assert not w.sync() and served(w).version == 1 and w.load_error


def test_a_replica_on_an_older_version_catches_up_and_rolls_back(store: Store) -> None:
    params = initial(store)
    pub = Publisher(store, every=100, keep=100)
    pub.published = Published(1, params, tensor_digests(params))
    for k in range(2, 4):
        params = step(params, k)
        pub.publish(params)
    w = watcher(store)
    assert w.sync() and served(w).version == 3 and served(w).deltas == 2  # 1 (full), 2, 3
    for k in range(4, 8):
        params = step(params, k)
        pub.publish(params)
    assert w.sync()
    assert served(w).version == 7 and served(w).deltas == 4 and same(served(w).params, pub.models[7])
    store.activate(5)  # roll back: from version 1's snapshot, not from the served 7
    assert w.sync() and served(w).version == 5 and same(served(w).params, pub.models[5])
    store.unpin()
    assert w.sync() and served(w).version == 7 and served(w).deltas == 2 and same(served(w).params, pub.models[7])


def test_a_replica_holding_the_base_applies_a_delta_whose_base_was_trimmed(store: Store) -> None:
    params = initial(store)
    pub = Publisher(store, every=100, keep=100)
    pub.published = Published(1, params, tensor_digests(params))
    params = step(params, 2)
    pub.publish(params)
    w = watcher(store)
    assert w.sync() and served(w).version == 2
    params = step(params, 3)
    pub.publish(params)
    if isinstance(store, LocalStore):
        with store._write() as conn:
            conn.execute("DELETE FROM models WHERE version IN (1, 2)")
    else:
        assert isinstance(store, RedisStore)
        store._redis.delete(*(store._key("model", n, part) for n in (1, 2) for part in ("meta", "weights")))
        store._redis.zrem(store._key("models"), 1, 2)
    assert w.sync() and served(w).version == 3 and same(served(w).params, pub.models[3])
    with pytest.raises(ModelLoadError, match="version 2 is not in the registry"):  # a fresh replica cannot
        load_version(store, 3, CONFIG)


def test_a_trainer_starts_from_a_full_snapshot_and_publishes_deltas(tmp_path: Path) -> None:
    settings = small_settings(
        tmp_path / "state", method="iu", user_buckets=8192, item_buckets=8192, full_snapshot_every=4, keep_versions=3
    )
    config = settings.model()
    store = LocalStore(settings.state_dir)
    try:
        feed(store, settings, 9)
        trainer = PeriodTrainer(store, settings)
        w = SwapWatcher(store, ModelHolder(), config, poll_seconds=60)
        trainer.run_once()
        # version 1 is the initial model, 2 full (the trainer did not publish 1), then deltas but for 5 and 9
        blobs = {v.version: read_blob(store.weights(v.version) or b"") for v in store.versions()}
        kinds = {n: "full" if isinstance(b, tuple) else b.base for n, b in blobs.items()}
        assert kinds == {5: "full", 6: 5, 7: 6, 8: 7, 9: "full", 10: 9}
        assert [v.base for v in store.versions()] in ([None] * 6, [None, 5, 6, 7, None, 9])  # as far as the store says
        assert w.sync() and same(served(w).params, trainer.updater.learner.params())
        for info in store.versions():
            loaded = resolve_version(store, info.version, config)
            assert combine(loaded.params, tensor_digests(loaded.params)) == read_digest(store, info.version)
        # a restarted trainer holds no base: its first version is a full snapshot
        feed(store, settings, 1)
        store.release_lease(trainer.owner)
        assert PeriodTrainer(store, settings).run_once()
        assert isinstance(read_blob(store.weights(11) or b""), tuple)
    finally:
        store.close()


def read_digest(store: Store, number: int) -> str:
    item = read_blob(store.weights(number) or b"")
    if isinstance(item, tuple):
        return combine(item[1], item[2]["digests"])
    return item.digest
