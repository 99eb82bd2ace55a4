"""One contract, two stores: every test runs on RedisStore (a real redis-server) and LocalStore (SQLite)
(the ``opener`` and ``store`` fixtures of conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from tests.conftest import Opener
from tests.faults import RedisClusterServers, RedisSentinels
from trainer.core.settings import Settings
from trainer.core.store import (
    Click,
    DroppedPeriod,
    EmptyPeriod,
    Interaction,
    LocalStore,
    NewVersion,
    Pointer,
    RedisStore,
    Store,
    StoreError,
    UnknownVersion,
    local_store,
    open_store,
    redis_clients,
    redis_store,
)


def event(user: str, item: str, label: int = 0, cats: tuple[str, ...] = ("c1",), ts: float = 1.7e9) -> Interaction:
    return Interaction(user, item, cats, label, ts)


def new_version(
    through: int, method: str = "iu", metrics: dict[str, float] | None = None, note: str = ""
) -> NewVersion:
    blob = f"weights through {through} {uuid.uuid4().hex}".encode()
    return NewVersion(blob, hashlib.sha256(blob).hexdigest(), through, method, metrics or {}, note)


def commit(store: Store, through: int, keep: int = 10) -> int:
    return store.commit_period(new_version(through), f"state {through}".encode(), keep).version


def numbers(store: Store) -> list[int]:
    return [info.version for info in store.versions()]


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


# -- the interaction log ----------------------------------------------------------


def test_a_new_store_is_empty(store: Store) -> None:
    assert store.ping()
    assert store.open_period() == 1
    assert store.period_size(1) == 0 and store.read_period(1) == []
    assert store.recent_clicks("u", 5) == []
    assert store.pointer() == Pointer(None, False)
    assert store.versions() == [] and store.version(1) is None and store.weights(1) is None
    assert store.trainer_progress() == (0, None) and store.trained_through() == 0
    assert store.trainer_status() == {}


def test_append_logs_in_order_in_the_open_period(store: Store) -> None:
    first = [
        event("u1", "i1", 1, ("a", "b"), 1700000000.123456),
        event("u2", "i2", 0, (), 1700000001.0),
        event("u1", "ünïcode item", 1, ("c",), 0.1 + 0.2),
    ]
    second = [event("u3", f"i{k}", k % 2, ts=1700000002.5 + k) for k in range(5)]
    assert store.append(first, history_length=5) == 1
    assert store.append(second, history_length=5) == 1
    assert store.append([], history_length=5) == 1
    assert store.period_size(1) == 8
    # exact: ids, categories, labels and float timestamps (histories: the next test)
    assert [replace(e, history=()) for e in store.read_period(1)] == first + second


@pytest.mark.parametrize("length", [0, 2])
def test_each_event_is_logged_with_its_users_clicks_just_before_it(store: Store, length: int) -> None:
    store.append(
        [event("a", "a1", 1, ("x",)), event("a", "a2", 0), event("a", "a3", 1, ()), event("b", "b1", 1)], length
    )
    store.rollover()  # histories span periods
    store.append([event("a", "a4", 1, ("w",))], length)
    store.append([event("a", "a5", 0), event("b", "b2", 0)], length)
    a1, a3, a4, b1 = Click("a1", ("x",)), Click("a3", ()), Click("a4", ("w",)), Click("b1", ("c1",))
    expected = [[(), (a1,), (a1,), ()], [(a1, a3), (a3, a4), (b1,)]]
    if not length:
        expected = [[()] * 4, [()] * 3]
    assert [[e.history for e in store.read_period(p)] for p in (1, 2)] == expected
    # serving reads the list these histories were taken from
    assert tuple(store.recent_clicks("a", length)) == ((a3, a4) if length else ())


def test_rollover_closes_the_open_period(store: Store) -> None:
    store.append([event("u", "a")], 5)
    assert store.rollover() == 1
    assert store.open_period() == 2
    assert store.append([event("u", "b"), event("u", "c")], 5) == 2
    assert store.rollover() == 2
    assert store.append([event("u", "d")], 5) == 3
    assert [store.period_size(p) for p in (1, 2, 3, 4)] == [1, 2, 1, 0]
    assert [[e.item_id for e in store.read_period(p)] for p in (1, 2, 3)] == [["a"], ["b", "c"], ["d"]]


def test_rollover_of_an_empty_period_raises_and_changes_nothing(store: Store) -> None:
    with pytest.raises(EmptyPeriod):
        store.rollover()
    assert store.open_period() == 1
    store.append([event("u", "a")], 5)
    store.rollover()
    with pytest.raises(EmptyPeriod) as raised:
        store.rollover()
    assert isinstance(raised.value, StoreError)
    assert store.open_period() == 2
    assert store.period_size(1) == 1 and store.period_size(2) == 0
    assert store.append([event("u", "b")], 5) == 2


def test_read_period_reads_long_periods_in_chunks(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_store, "READ_CHUNK", 3)
    for size in (3, 6, 7):  # exact multiples of the chunk and one more
        events = [event("u", f"i{k}", ts=float(k)) for k in range(size)]
        period = store.append(events, 5)
        assert store.read_period(period) == events
        store.rollover()


def test_recent_clicks_keep_the_newest_positives_per_user_oldest_first(store: Store) -> None:
    store.append(
        [
            event("a", "a1", 1, ("x",)),
            event("a", "a-skip", 0),
            event("b", "b1", 1),
            event("a", "a2", 1, ("y", "z")),
        ],
        history_length=3,
    )
    store.rollover()  # click lists span periods
    store.append([event("a", "a3", 1, ()), event("a", "a-skip2", 0), event("a", "a4", 1, ("w",))], history_length=3)
    assert store.recent_clicks("a", 3) == [Click("a2", ("y", "z")), Click("a3", ()), Click("a4", ("w",))]
    assert store.recent_clicks("a", 2) == [Click("a3", ()), Click("a4", ("w",))]
    assert store.recent_clicks("a", 0) == []
    assert store.recent_clicks("b", 3) == [Click("b1", ("c1",))]
    assert store.recent_clicks("nobody", 3) == []


def test_dropping_trained_logs_keeps_the_rest_and_the_recent_clicks(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_store, "DROP_SLICE", 2)  # the embedded store drops in slices of the log
    store.append([event("c", "c1", 1)], 5)  # c's only click, in a period to be dropped
    for period in (1, 2, 3):
        store.append([event("a", f"a{period}", 1), event("a", f"skip{period}", 0), event("b", f"b{period}", 0)], 5)
        store.rollover()
    store.append([event("a", "a4", 1)], 5)  # the open period
    with pytest.raises(StoreError, match="trained through 0"):
        store.drop_logs(1, 2)  # nothing trained yet: nothing dropped
    assert store.period_size(1) == 4
    commit(store, 1)
    commit(store, 2)
    with pytest.raises(StoreError, match="trained through 2"):
        store.drop_logs(3, 2)
    assert store.drop_logs(2, history_length=2) == 2
    assert store.drop_logs(2, history_length=2) == 0  # already gone
    for period in (1, 2):
        with pytest.raises(DroppedPeriod):
            store.read_period(period)
        with pytest.raises(DroppedPeriod):
            store.period_size(period)
    assert [e.item_id for e in store.read_period(3)] == ["a3", "skip3", "b3"]
    assert store.period_size(4) == 1
    # a user's newest clicks outlive their periods' logs
    assert store.recent_clicks("a", 2) == [Click("a3", ("c1",)), Click("a4", ("c1",))]
    assert store.recent_clicks("c", 2) == [Click("c1", ("c1",))]


# -- the model registry -------------------------------------------------------------


def test_publish_initial_publishes_version_one_only_once(store: Store) -> None:
    initial = new_version(0, "initial", note="initial model")
    before = time.time()
    info = store.publish_initial(initial)
    assert info is not None
    assert (info.version, info.trained_through, info.method, info.note) == (1, 0, "initial", "initial model")
    assert info.sha256 == initial.sha256 and info.size == len(initial.weights)
    assert before - 1 <= info.created <= time.time() + 1
    assert store.versions() == [info] and store.version(1) == info
    assert store.weights(1) == initial.weights
    assert store.pointer() == Pointer(1, False)
    assert store.trained_through() == 0

    assert store.publish_initial(new_version(0, "initial")) is None
    assert store.versions() == [info] and store.weights(1) == initial.weights
    commit(store, 1)
    assert store.publish_initial(new_version(0, "initial")) is None
    assert numbers(store) == [1, 2]


def test_publish_initial_is_refused_once_any_version_was_published(store: Store) -> None:
    assert commit(store, 1) == 1  # no initial model: the first period gets version 1
    assert store.publish_initial(new_version(0, "initial")) is None
    assert numbers(store) == [1] and store.pointer() == Pointer(1, False)


def test_commit_period_numbers_versions_and_moves_the_pointer(store: Store) -> None:
    store.publish_initial(new_version(0, "initial"))
    version = new_version(1, "asmg-gru-multi", metrics={"pv_auc": 0.712345678901234, "nan": float("nan")}, note="n")
    info = store.commit_period(version, b"\x00state\xff", keep=10)
    assert (info.version, info.trained_through, info.method, info.note) == (2, 1, "asmg-gru-multi", "n")
    assert info.metrics["pv_auc"] == 0.712345678901234 and info.metrics["nan"] != info.metrics["nan"]
    assert info.size == len(version.weights) and info.sha256 == version.sha256
    stored = store.version(2)
    assert stored is not None and stored.to_dict().keys() == info.to_dict().keys()
    assert (stored.created, stored.metrics["pv_auc"]) == (info.created, info.metrics["pv_auc"])
    assert store.weights(2) == version.weights
    assert store.pointer() == Pointer(2, False)
    assert store.trainer_progress() == (1, b"\x00state\xff") and store.trained_through() == 1
    assert commit(store, 2) == 3
    assert numbers(store) == [1, 2, 3] and store.pointer() == Pointer(3, False)
    assert [v.trained_through for v in store.versions()] == [0, 1, 2]


def test_commit_period_refuses_a_repeated_or_skipped_period_and_changes_nothing(store: Store) -> None:
    store.publish_initial(new_version(0, "initial"))
    commit(store, 1)
    before = (store.versions(), store.pointer(), store.trainer_progress())
    for through in (1, 0, 3):
        with pytest.raises(StoreError):
            store.commit_period(new_version(through), b"other state", keep=10)
    assert (store.versions(), store.pointer(), store.trainer_progress()) == before
    assert store.weights(3) is None
    assert commit(store, 2) == 3  # a refusal uses up no version number


def test_commit_period_keeps_only_the_newest_versions(store: Store) -> None:
    store.publish_initial(new_version(0, "initial"))
    for through in range(1, 6):
        commit(store, through, keep=3)
    assert numbers(store) == [4, 5, 6]
    assert [store.version(n) for n in (1, 2, 3)] == [None, None, None]
    assert [store.weights(n) for n in (1, 2, 3)] == [None, None, None]
    assert store.pointer() == Pointer(6, False)


def test_trimming_never_drops_the_version_the_pointer_names(store: Store) -> None:
    store.publish_initial(new_version(0, "initial"))
    commit(store, 1, keep=2)
    assert store.activate(1) == Pointer(1, True)
    for through in range(2, 5):
        commit(store, through, keep=2)
        assert store.pointer() == Pointer(1, True)  # pinned: commits do not move it
    assert numbers(store) == [1, 4, 5]
    assert store.weights(1) is not None
    assert store.unpin() == Pointer(5, False)
    commit(store, 5, keep=2)
    assert numbers(store) == [5, 6] and store.pointer() == Pointer(6, False)


def test_activate_pins_and_unpin_returns_to_the_newest(store: Store) -> None:
    assert store.unpin() == Pointer(None, False)  # nothing to point at yet
    with pytest.raises(UnknownVersion):
        store.activate(1)
    store.publish_initial(new_version(0, "initial"))
    commit(store, 1)
    commit(store, 2)
    with pytest.raises(UnknownVersion) as raised:
        store.activate(7)
    assert isinstance(raised.value, StoreError)
    assert store.pointer() == Pointer(3, False)
    assert store.activate(2) == Pointer(2, True) == store.pointer()
    assert store.activate(1) == Pointer(1, True) == store.pointer()
    assert store.unpin() == Pointer(3, False) == store.pointer()


def test_wait_for_swap_times_out_without_a_change(store: Store) -> None:
    started = time.monotonic()
    assert store.wait_for_swap(0.2) is False
    assert 0.15 <= time.monotonic() - started < 3


def test_wait_for_swap_sees_pointer_changes_made_by_another_process(opener: Opener) -> None:
    watcher = opener()
    assert watcher.wait_for_swap(0.05) is False  # subscribes
    other = opener()
    changes: list[Callable[[], object]] = [
        lambda: other.publish_initial(new_version(0, "initial")),
        lambda: commit(other, 1),
        lambda: other.activate(1),
        lambda: commit(other, 2),  # pinned: the pointer stays, replicas are still told to re-read it
        lambda: other.unpin(),
    ]
    for change in changes:
        change()
        assert watcher.wait_for_swap(5) is True
        assert watcher.wait_for_swap(0.05) is False  # one change, one notification
    with pytest.raises(StoreError):
        commit(other, 2)
    with pytest.raises(UnknownVersion):
        other.activate(99)
    assert other.publish_initial(new_version(0, "initial")) is None
    assert watcher.wait_for_swap(0.2) is False  # refusals change nothing and say nothing


def test_a_watcher_thread_wakes_up_on_a_swap(opener: Opener) -> None:
    watcher, other = opener(), opener()
    watcher.wait_for_swap(0.05)
    woke: list[bool] = []
    thread = threading.Thread(target=lambda: woke.append(watcher.wait_for_swap(10)))
    thread.start()
    time.sleep(0.1)
    started = time.monotonic()
    other.publish_initial(new_version(0, "initial"))
    thread.join(timeout=10)
    assert woke == [True] and time.monotonic() - started < 5


# -- the trainer --------------------------------------------------------------------


def test_the_lease_is_exclusive_until_its_owner_releases_it(opener: Opener) -> None:
    one, two = opener(), opener()
    assert one.acquire_lease("a", 30)
    assert not two.acquire_lease("b", 30)
    assert one.acquire_lease("a", 30)  # the owner renews
    two.release_lease("b")  # not the owner: nothing happens
    assert not two.acquire_lease("b", 30)
    one.release_lease("a")
    assert two.acquire_lease("b", 30)
    assert not one.acquire_lease("a", 30)


def test_the_lease_lapses_unless_renewed(store: Store) -> None:
    assert store.acquire_lease("a", 0.3)
    time.sleep(0.2)
    assert store.acquire_lease("a", 0.6)  # renewal restarts the clock
    time.sleep(0.2)  # past the first lease, well within the renewed one
    assert not store.acquire_lease("b", 0.3)
    time.sleep(0.6)
    assert store.acquire_lease("b", 0.3)  # a lapsed: b takes over
    assert not store.acquire_lease("a", 0.3)
    store.release_lease("a")
    assert not store.acquire_lease("a", 0.3)


def test_trainer_status_is_replaced_whole(store: Store) -> None:
    first = {"state": "training", "period": 3, "owner": "host:1", "last": {"metrics": {"auc": 0.75}}}
    store.set_trainer_status(first)
    assert store.trainer_status() == first
    store.set_trainer_status({"state": "idle"})
    assert store.trainer_status() == {"state": "idle"}


# -- concurrency and durability -----------------------------------------------------


def test_concurrent_appends_and_rollovers_lose_and_duplicate_nothing(opener: Opener) -> None:
    writers, batches, per_batch, history = 4, 25, 3, 4
    stores = [opener(), opener()]  # appenders share two store objects; the roller uses a third
    roller = opener()
    landed: list[tuple[int, list[Interaction]]] = []
    closed: list[int] = []
    sizes_at_close: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def append(writer: int) -> None:
        try:
            target = stores[writer % 2]
            for b in range(batches):
                wait_until(lambda b=b: len(closed) >= b // 5)  # so rollovers interleave even on a fast disk
                batch = [event(f"u{writer}", f"{writer}-{b}-{k}", (b + k) % 2) for k in range(per_batch)]
                landed.append((target.append(batch, history), batch))
        except BaseException as exc:
            errors.append(exc)

    def roll() -> None:
        try:
            while not done.is_set():
                with contextlib.suppress(EmptyPeriod):
                    closed.append(roller.rollover())
                    sizes_at_close.append(roller.period_size(closed[-1]))
                time.sleep(0.002)
        except BaseException as exc:
            errors.append(exc)

    rolling = threading.Thread(target=roll)
    appending = [threading.Thread(target=append, args=(w,)) for w in range(writers)]
    rolling.start()
    for thread in appending:
        thread.start()
    for thread in appending:
        thread.join()
    done.set()
    rolling.join()
    assert errors == []

    last = roller.open_period()
    assert closed == list(range(1, last)) and len(closed) >= batches // 5 - 1
    sizes = [roller.period_size(p) for p in range(1, last + 1)]
    assert sum(sizes) == writers * batches * per_batch
    assert sizes[:-1] == sizes_at_close  # nothing landed in a period after it closed
    logged = {p: roller.read_period(p) for p in range(1, last + 1)}
    items = [e.item_id for p in sorted(logged) for e in logged[p]]
    assert len(items) == len(set(items)) == writers * batches * per_batch
    bare = {p: [replace(e, history=()) for e in events] for p, events in logged.items()}
    for period, batch in landed:  # each batch whole, in the period append reported
        position = bare[period].index(batch[0])
        assert bare[period][position : position + per_batch] == batch
    clicks: dict[str, list[Click]] = {}
    for e in (e for p in sorted(logged) for e in logged[p]):  # each event with the clicks logged before it
        before = clicks.setdefault(e.user_id, [])
        assert e.history == tuple(before[-history:])
        if e.label:
            before.append(Click(e.item_id, e.categories))
    for writer in range(writers):  # each writer's events in its order, across periods
        own = [item for item in items if item.startswith(f"{writer}-")]
        assert own == [f"{writer}-{b}-{k}" for b in range(batches) for k in range(per_batch)]
        positives = [e.item_id for p in sorted(logged) for e in logged[p] if e.user_id == f"u{writer}" and e.label]
        assert [c.item_id for c in roller.recent_clicks(f"u{writer}", history)] == positives[-history:]


def test_state_outlives_the_store_object(opener: Opener) -> None:
    first = opener()
    first.append([event("u", "a", 1), event("u", "b", 0)], 5)
    first.rollover()
    first.append([event("u", "c", 1)], 5)
    initial = first.publish_initial(new_version(0, "initial"))
    assert initial is not None
    info = first.commit_period(new_version(1), b"state", keep=10)
    first.activate(1)
    first.acquire_lease("trainer-1", 30)
    first.set_trainer_status({"state": "idle"})
    second = opener()
    assert not second.acquire_lease("trainer-2", 30)  # its holder is alive
    first.close()

    assert second.open_period() == 2
    assert [e.item_id for e in second.read_period(1)] == ["a", "b"]
    assert [e.item_id for e in second.read_period(2)] == ["c"]
    assert second.recent_clicks("u", 5) == [Click("a", ("c1",)), Click("c", ("c1",))]
    assert second.versions() == [initial, info]
    assert second.pointer() == Pointer(1, True)
    assert second.trainer_progress() == (1, b"state")
    assert second.trainer_status() == {"state": "idle"}


def test_a_closed_local_store_reopens_from_its_directory(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "nested" / "state")
    store.append([event("u", "a", 1)], 5)
    store.close()
    assert not store.ping()
    assert (tmp_path / "nested" / "state" / "store.sqlite3").is_file()
    again = LocalStore(tmp_path / "nested" / "state")
    try:
        assert again.read_period(1) == [event("u", "a", 1)]
    finally:
        again.close()


def test_a_trainer_state_of_many_chunks_reads_back_whole(opener: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    # both stores split the state into values of a bounded size (Redis caps one at 512 MB)
    monkeypatch.setattr(redis_store, "STATE_CHUNK_BYTES", 7)
    monkeypatch.setattr(local_store, "STATE_CHUNK_BYTES", 7)
    store = opener()
    big = bytes(range(256)) * 3
    store.commit_period(new_version(1), big, keep=10)
    assert store.trainer_progress() == (1, big)
    assert opener().trainer_progress() == (1, big)
    store.commit_period(new_version(2), b"small", keep=10)  # fewer chunks than before: none left over
    assert store.trainer_progress() == (2, b"small")
    store.commit_period(new_version(3), b"", keep=10)
    assert store.trainer_progress() == (3, b"")


def test_the_store_knows_when_the_open_period_was_opened(store: Store) -> None:
    assert store.period_started() is None
    store.append([event("u", "a")], 5)
    before = time.time()
    store.rollover()
    opened = store.period_started()
    assert opened is not None and before - 1 <= opened <= time.time() + 1


def test_the_async_calls_log_and_read_as_the_plain_ones(store: Store) -> None:
    async def run() -> tuple[int, list[Click]]:
        try:
            period = await store.append_async([event("u", "a", 1), event("u", "b", 0)], 5)
            return period, await store.recent_clicks_async("u", 5)
        finally:
            await store.aclose()

    period, clicks = asyncio.run(run())
    assert period == 1 and clicks == [Click("a", ("c1",))]
    assert store.read_period(1) == [event("u", "a", 1), replace(event("u", "b", 0), history=(Click("a", ("c1",)),))]


def test_a_local_lease_whose_holder_was_killed_is_taken_at_once(tmp_path: Path) -> None:
    script = (
        "import sys, time; from pathlib import Path; from trainer.core.store.local_store import LocalStore; "
        "store = LocalStore(Path(sys.argv[1])); assert store.acquire_lease('dead', 300); "
        "print('held', flush=True); time.sleep(300)"
    )
    root = Path(__file__).resolve().parent.parent
    store = LocalStore(tmp_path / "state")
    try:
        with subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path / "state")], stdout=subprocess.PIPE, cwd=root
        ) as holder:
            try:
                assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
                assert not store.acquire_lease("next", 30)  # its holder lives
            finally:
                holder.kill()
        assert store.acquire_lease("next", 30)  # not 300 s later: the holder's process is gone
        other = LocalStore(tmp_path / "state")
        try:
            assert not other.acquire_lease("third", 30)  # and the new holder's lease holds
        finally:
            other.close()
    finally:
        store.close()


# -- Redis specifics and open_store ---------------------------------------------------


def test_redis_keys_stay_under_their_prefix(redis_url: str) -> None:
    one, two = RedisStore(redis_url, "one"), RedisStore(redis_url, "two")
    try:
        one.append([event("u", "a", 1)], 5)
        one.rollover()
        one.publish_initial(new_version(0, "initial"))
        commit(one, 1)
        one.acquire_lease("t", 30)
        one.set_trainer_status({"state": "idle"})
        assert two.open_period() == 1 and two.versions() == [] and two.acquire_lease("t2", 30)
        with redis.Redis.from_url(redis_url) as client:
            keys = {key.decode() for key in client.keys("*")}
        assert keys and all(key.startswith(("one:", "two:")) for key in keys)
        assert {"one:period", "one:log:1", "one:clicks:u", "one:models", "one:pointer", "one:trainer:state"} <= keys
        one.append([event("u", f"more{k}", 1) for k in range(8)], 5)
        with redis.Redis.from_url(redis_url) as client:
            assert client.llen("one:clicks:u") == 5  # the list itself is trimmed, not just the reply
    finally:
        one.close()
        two.close()


@pytest.mark.parametrize(
    ("prefix", "tagged"),
    [("asmg", "{asmg}"), ("{team}.asmg", "{team}.asmg"), ("a{}b", "{a{}b}"), ("a{b", "{a{b}")],
)
def test_a_cluster_prefix_is_a_hash_tag(prefix: str, tagged: str) -> None:
    assert redis_store.hash_tagged(prefix) == tagged


def test_on_a_cluster_every_key_of_a_service_lives_in_its_prefix_slot(redis_cluster: str) -> None:
    name = f"svc{uuid.uuid4().hex[:6]}"
    store = RedisStore(redis_cluster, name, mode="cluster")
    try:
        assert store.prefix == "{" + name + "}"
        store.append([event("u", "a", 1), event("v", "b", 0)], 5)
        store.rollover()
        store.publish_initial(new_version(0, "initial"))
        commit(store, 1)
        store.drop_logs(1, 5)
        store.append([event("u", "c", 1)], 5)
        store.acquire_lease("t", 30)
        store.set_trainer_status({"state": "idle"})
        with redis.RedisCluster.from_url(redis_cluster) as client:
            keys = {key.decode() for key in client.keys(target_nodes=redis.RedisCluster.ALL_NODES)}
            ours = {key for key in keys if key.startswith(store.prefix)}
            assert {client.keyslot(key) for key in ours} == {client.keyslot(store.prefix)}
            owners = {client.get_node_from_key(key).name for key in ours}
        assert len(owners) == 1
        assert {
            f"{store.prefix}:{k}" for k in ("period", "log:2", "clicks:u", "models", "pointer", "trainer:lease")
        } <= ours
    finally:
        store.close()


def test_on_a_cluster_a_timed_out_append_is_not_sent_again(tmp_path: Path) -> None:
    """The node holding the service's slot stalls: an append fails after one timeout (the Cluster
    client's default would resend it, and a resent append may log its events twice), and once
    the node resumes the log holds the event once."""
    cluster = RedisClusterServers(tmp_path / "cluster")
    cluster.start()
    store = RedisStore(cluster.url, "stall", timeout=1.0, mode="cluster")
    try:
        store.append([event("u", "first")], 5)
        with redis.RedisCluster.from_url(cluster.url) as client:
            owner = client.get_node_from_key(store.prefix).port
        node = next(server for server in cluster.servers if server.port == owner)
        node.signal(signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            store.append([event("u", "second")], 5)
        waited = time.monotonic() - started
        node.signal(signal.SIGCONT)
        assert 1.0 <= waited < 1.7  # one timeout, not two
        wait_until(lambda: store.period_size(1) >= 2)
        time.sleep(0.3)  # a second copy, had one been sent, would be behind the first
        assert [e.item_id for e in store.read_period(1)] == ["first", "second"]
    finally:
        store.close()
        cluster.close()


@pytest.mark.parametrize(
    ("url", "sentinels", "service", "password"),
    [
        ("redis+sentinel://127.0.0.1:26379/asmg", (("127.0.0.1", 26379),), "asmg", None),
        ("redis+sentinel://:s%40cret@a:1,b:2,[::1]:3/primary", (("a", 1), ("b", 2), ("::1", 3)), "primary", "s@cret"),
    ],
)
def test_a_sentinel_url_names_the_sentinels_and_the_service(
    url: str, sentinels: tuple[tuple[str, int], ...], service: str, password: str | None
) -> None:
    assert redis_clients.sentinel_address(url) == redis_clients.SentinelAddress(sentinels, service, password)


@pytest.mark.parametrize(
    ("url", "fault"),
    [
        ("redis://127.0.0.1:6379/0", "starts with redis+sentinel://"),
        ("redis+sentinel://127.0.0.1/asmg", "is not host:port"),
        ("redis+sentinel:///asmg", "at least one Sentinel"),
        ("redis+sentinel://127.0.0.1:26379", "service name"),
    ],
)
def test_a_bad_sentinel_url_is_refused_with_what_is_wrong(url: str, fault: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fault)):
        Settings(redis_url=url, redis_mode="sentinel")


def test_through_sentinel_the_store_follows_a_failover(tmp_path: Path) -> None:
    """The primary is killed: the Sentinels promote its replica, and the same store object
    appends, commits and sees swaps on the new primary, with what was replicated before."""
    sentinels = RedisSentinels(tmp_path / "sentinel")
    sentinels.start()
    store = RedisStore(sentinels.url, "fo", timeout=1.0, mode="sentinel")
    watcher = RedisStore(sentinels.url, "fo", timeout=1.0, mode="sentinel")
    try:
        store.append([event("u", "before", 1)], 5)
        store.publish_initial(new_version(0, "initial"))
        assert watcher.wait_for_swap(0.05) is False  # subscribed on the first primary
        with redis.Redis(port=sentinels.primary.port) as primary:
            assert primary.wait(1, 5000) == 1  # replicated: a failover keeps it
        sentinels.primary.kill()
        wait_until(lambda: sentinels.primary_port() == sentinels.replica.port, seconds=30)

        def appended() -> bool:
            try:
                store.append([event("u", "after", 1)], 5)
            except redis.ConnectionError:  # the failover was still under way
                return False
            return True

        wait_until(appended, seconds=15)
        assert [e.item_id for e in store.read_period(1)] == ["before", "after"]
        assert [c.item_id for c in store.recent_clicks("u", 5)] == ["before", "after"]
        # the subscription was to the primary that died: it fails or comes back as a "swap" (a
        # resubscription may have missed a notice, so the pointer must be checked), then is quiet
        quiet, recheck, deadline = 0, False, time.monotonic() + 15
        while quiet < 2:
            assert time.monotonic() < deadline, "the swap subscription did not come back"
            try:
                swapped = watcher.wait_for_swap(0.2)
            except redis.RedisError:
                swapped = True
            recheck |= swapped
            quiet = 0 if swapped else quiet + 1
        assert recheck
        store.rollover()
        assert commit(store, 1) == 2
        assert watcher.wait_for_swap(5.0) is True
        assert watcher.pointer() == Pointer(2, False)
    finally:
        store.close()
        watcher.close()
        sentinels.close()


def test_redis_ping_is_false_when_the_server_is_gone() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = RedisStore(f"redis://127.0.0.1:{port}/0")
    try:
        assert store.ping() is False
    finally:
        store.close()


def test_open_store_picks_the_backend_from_the_settings(redis_url: str, redis_cluster: str, tmp_path: Path) -> None:
    remote = open_store(Settings(redis_url=redis_url, key_prefix="svc"))
    clustered = open_store(Settings(redis_url=redis_cluster, redis_mode="cluster", key_prefix="svc"))
    local = open_store(Settings(redis_url=None, state_dir=tmp_path / "state"))
    try:
        assert isinstance(remote, RedisStore) and remote.prefix == "svc" and remote.mode == "standalone"
        assert isinstance(clustered, RedisStore) and clustered.prefix == "{svc}" and clustered.mode == "cluster"
        assert isinstance(local, LocalStore) and local.path == tmp_path / "state" / "store.sqlite3"
        assert remote.ping() and clustered.ping() and local.ping()
    finally:
        remote.close()
        clustered.close()
        local.close()
