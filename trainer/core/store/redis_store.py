"""The production store: one Redis (7+) shared by every API replica and the trainer.

Every key lives under ``{prefix}:``:

==============================  ======================================================================
``{prefix}:period``             the open period (absent means 1)
``{prefix}:period:opened``      when the open period was opened, seconds since the epoch by the server's
                                clock (absent before the first rollover)
``{prefix}:log:{period}``       a stream per period; fields ``user``, ``item``, ``cats`` (JSON list),
                                ``label`` (0/1), ``ts`` (float text) and ``hist``: with the user's first
                                event of the period, their click list as it stood before it (a JSON list
                                of its entries) and ``keep`` (the list's limit); else empty
``{prefix}:log:{period}:users`` the users with an event in the period (whose list was snapshotted)
``{prefix}:logs:dropped``       the last period whose log was deleted (absent means 0)
``{prefix}:clicks:{user_id}``   a list of JSON ``[item_id, [cats...]]``, newest last, trimmed to the
                                history length
``{prefix}:version:last``       the last version number handed out (absent: the registry never held one)
``{prefix}:model:{n}:weights``  the weights blob of version ``n``
``{prefix}:model:{n}:meta``     JSON of :meth:`VersionInfo.to_dict`
``{prefix}:models``             sorted set of the kept version numbers (score = number)
``{prefix}:pointer``            hash: ``version`` (absent before the first version), ``pinned`` (0/1)
``{prefix}:trainer:through``    the last period committed (absent means 0)
``{prefix}:trainer:state``      the trainer state blob, or its first chunk
``{prefix}:trainer:state:{i}``  its chunk ``i`` (from 1) when it is over ``STATE_CHUNK_BYTES``: Redis
                                caps one value at 512 MB
``{prefix}:trainer:state:chunks``  how many chunks the state has (absent means 1)
``{prefix}:trainer:lease``      the trainer lease; value = owner, expiry = the lease
``{prefix}:trainer:status``     JSON status record
``{prefix}:swaps``              pub/sub channel; the new pointer's version is published on every change
==============================  ======================================================================

Multi-key steps run as Lua scripts (``lua/*.lua`` beside this module), so they are atomic with respect to one
another: ``append`` and ``rollover`` never interleave, and ``commit_period``
publishes a version, advances the trainer and moves the pointer in one step.
The scripts derive the per-period and per-user keys from the prefix; on a Redis
Cluster (``mode="cluster"``) the prefix is written as a hash tag (``{asmg}:period``),
so every key of the service hashes to one slot and every script runs on the one
node that holds it. The service's keys then live on one master: a Cluster gives
this service failover and a shared deployment with other tenants, not more
capacity for its own data.

Every command has a timeout (``socket_timeout``): ``ASMG_STORE_TIMEOUT_SECONDS``
for an API process, ``ASMG_TRAINER_STORE_TIMEOUT_SECONDS`` for the trainer, so
a stalled server (alive but not answering) fails a call instead of hanging
it. A command is retried once, after a short backoff, only when its
connection failed (a server restart leaves every pooled connection dead), never
after a timeout: a timed-out ``append`` may have reached the server, and
running it twice would log its events twice. How the clients reach Redis (one
server, a Sentinel-watched primary, a Cluster) is
:mod:`trainer.core.store.redis_clients`. The API's two request-path calls
(``append_async``, ``recent_clicks_async``) go through an asyncio client, so a
slow store holds up only the requests that wait for it, never the event loop.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
from redis.client import PubSub
from redis.exceptions import RedisError

from trainer.core.store.base import (
    Click,
    ClickSnapshot,
    DroppedPeriod,
    EmptyPeriod,
    Interaction,
    NewVersion,
    Pointer,
    Store,
    StoreError,
    UnknownVersion,
    VersionInfo,
    rebuild_histories,
)
from trainer.core.store.redis_clients import AsyncClient, RedisMode, async_client, close_async_client, sync_client

READ_CHUNK = 10_000  # stream entries per XRANGE reply
SUBSCRIBE_SECONDS = 5.0  # how long the first wait_for_swap may wait for its subscription to be confirmed
STATE_CHUNK_BYTES = 128 << 20  # the trainer state is stored in values of at most this size


def _script(name: str) -> str:
    """A Lua script shipped beside this module (``lua/{name}.lua``)."""
    return resources.files("trainer.core.store").joinpath("lua", f"{name}.lua").read_text()


def hash_tagged(prefix: str) -> str:
    """``prefix`` as a Redis Cluster hash tag, unless it already holds one."""
    # Redis hashes the text between the key's first "{" and the next "}", when that is not empty
    start = prefix.find("{")
    if start >= 0 and prefix.find("}", start + 1) > start + 1:
        return prefix
    return "{" + prefix + "}"


class RedisStore(Store):
    def __init__(self, url: str, prefix: str = "asmg", timeout: float = 2.0, *, mode: RedisMode = "standalone") -> None:
        self.prefix = hash_tagged(prefix) if mode == "cluster" else prefix
        self.mode = mode
        self._url = url
        self._timeout = timeout
        self._redis = sync_client(url, mode, timeout)
        self._async: AsyncClient | None = None
        self._channel = self._key("swaps")
        self._append = self._redis.register_script(_script("append"))
        self._progress = self._redis.register_script(_script("progress"))
        self._rollover = self._redis.register_script(_script("rollover"))
        self._drop_logs = self._redis.register_script(_script("drop_logs"))
        self._publish_initial = self._redis.register_script(_script("publish_initial"))
        self._commit = self._redis.register_script(_script("commit"))
        self._activate = self._redis.register_script(_script("activate"))
        self._unpin = self._redis.register_script(_script("unpin"))
        self._acquire = self._redis.register_script(_script("acquire"))
        self._release = self._redis.register_script(_script("release"))
        self._pubsub: PubSub | None = None
        self._pubsub_lock = threading.Lock()

    def _key(self, *parts: str | int) -> str:
        return ":".join([self.prefix, *map(str, parts)])

    # -- the interaction log ------------------------------------------------------

    def open_period(self) -> int:
        value: Any = self._redis.get(self._key("period"))
        return 1 if value is None else int(value)

    def append(self, events: Sequence[Interaction], history_length: int) -> int:
        if not events:
            return self.open_period()
        period: Any = self._append(keys=[self._key("period")], args=self._append_args(events, history_length))
        return int(period)

    def _append_args(self, events: Sequence[Interaction], history_length: int) -> list[str | int]:
        args: list[str | int] = [self.prefix, history_length]
        for event in events:
            cats = json.dumps(list(event.categories))
            click = json.dumps([event.item_id, list(event.categories)]) if event.label == 1 else ""
            args += [event.user_id, event.item_id, cats, int(event.label), repr(float(event.timestamp)), click]
        return args

    def _async_client(self) -> AsyncClient:
        """The request path's client, made on first use inside the event loop that uses it."""
        if self._async is None:
            self._async = async_client(self._url, self.mode, self._timeout)
        return self._async

    async def append_async(self, events: Sequence[Interaction], history_length: int) -> int:
        if not events:
            return await super().append_async(events, history_length)
        client = self._async_client()
        keys, args = [self._key("period")], self._append_args(events, history_length)
        try:
            period: Any = await client.evalsha(self._append.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:  # a restarted server has forgotten it
            period = await client.eval(_script("append"), len(keys), *keys, *args)
        return int(period)

    async def recent_clicks_async(self, user_id: str, limit: int) -> list[Click]:
        if limit <= 0:
            return []
        raw: Any = await self._async_client().lrange(self._key("clicks", user_id), -limit, -1)
        return _clicks(raw)

    def period_started(self) -> float | None:
        value: Any = self._redis.get(self._key("period", "opened"))
        return None if value is None else float(value)

    def rollover(self) -> int:
        period = int(self._rollover(keys=[self._key("period")], args=[self.prefix]))
        if period < 0:
            raise EmptyPeriod(f"period {-period} holds no events")
        return period

    def period_size(self, period: int) -> int:
        self._check_kept(period)
        size: Any = self._redis.xlen(self._key("log", period))
        return int(size)

    def _check_kept(self, period: int) -> None:
        dropped: Any = self._redis.get(self._key("logs", "dropped"))
        if dropped is not None and period <= int(dropped):
            raise DroppedPeriod(f"period {period}'s log was deleted (kept from period {int(dropped) + 1} on)")

    def drop_logs(self, through: int, history_length: int) -> int:
        # the recent-click lists are kept apart from the logs, trimmed as they grow
        ok, value = self._drop_logs(
            keys=[self._key("trainer", "through"), self._key("logs", "dropped")], args=[self.prefix, through]
        )
        if not int(ok):
            raise StoreError(f"refusing to drop the logs through period {through}: trained through {int(value)}")
        return int(value)

    def read_period(self, period: int) -> list[Interaction]:
        self._check_kept(period)
        key = self._key("log", period)
        events: list[tuple[Interaction, ClickSnapshot | None]] = []
        start: bytes | str = "-"
        while True:
            chunk: Any = self._redis.xrange(key, min=start, max="+", count=READ_CHUNK)
            events += (_interaction(fields) for _, fields in chunk)
            if len(chunk) < READ_CHUNK:
                return rebuild_histories(events)
            start = b"(" + chunk[-1][0]

    def recent_clicks(self, user_id: str, limit: int) -> list[Click]:
        if limit <= 0:
            return []
        raw: Any = self._redis.lrange(self._key("clicks", user_id), -limit, -1)
        return _clicks(raw)

    # -- the model registry -------------------------------------------------------

    def publish_initial(self, version: NewVersion) -> VersionInfo | None:
        info = _draft(version)
        done = self._publish_initial(
            keys=[self._key("version", "last"), self._key("models"), self._key("pointer")],
            args=[self.prefix, _meta_tail(info), version.weights, self._channel],
        )
        return dataclasses.replace(info, version=1) if int(done) else None

    def commit_period(self, version: NewVersion, trainer_state: bytes, keep: int) -> VersionInfo:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, not {keep}")
        info = _draft(version)
        keys = [
            self._key("trainer", "through"),
            self._key("trainer", "state"),
            self._key("version", "last"),
            self._key("models"),
            self._key("pointer"),
            self._key("trainer", "state", "chunks"),
        ]
        args: list[str | int | bytes] = [
            self.prefix,
            version.trained_through,
            _meta_tail(info),
            version.weights,
            keep,
            self._channel,
        ]
        view = memoryview(trainer_state)
        args += [bytes(view[i : i + STATE_CHUNK_BYTES]) for i in range(0, max(len(view), 1), STATE_CHUNK_BYTES)]
        ok, value = self._commit(keys=keys, args=args)
        if not int(ok):
            raise StoreError(
                f"refusing to publish a model trained through period {version.trained_through}: "
                f"the store is trained through period {int(value)}"
            )
        return dataclasses.replace(info, version=int(value))

    def versions(self) -> list[VersionInfo]:
        numbers: Any = self._redis.zrange(self._key("models"), 0, -1)
        if not numbers:
            return []
        metas: Any = self._redis.mget([self._key("model", int(n), "meta") for n in numbers])
        # a version trimmed between the two calls is just left out
        return [VersionInfo.from_dict(json.loads(meta)) for meta in metas if meta is not None]

    def version(self, number: int) -> VersionInfo | None:
        meta: Any = self._redis.get(self._key("model", number, "meta"))
        return None if meta is None else VersionInfo.from_dict(json.loads(meta))

    def weights(self, number: int) -> bytes | None:
        blob: Any = self._redis.get(self._key("model", number, "weights"))
        return None if blob is None else bytes(blob)

    def pointer(self) -> Pointer:
        values: Any = self._redis.hmget(self._key("pointer"), ["version", "pinned"])
        version, pinned = values
        return Pointer(None if version is None else int(version), pinned == b"1")

    def activate(self, number: int) -> Pointer:
        done = self._activate(keys=[self._key("models"), self._key("pointer")], args=[number, self._channel])
        if not int(done):
            raise UnknownVersion(f"version {number} is not in the registry")
        return Pointer(number, True)

    def unpin(self) -> Pointer:
        newest = int(self._unpin(keys=[self._key("models"), self._key("pointer")], args=[self._channel]))
        return Pointer(newest or None, False)

    def wait_for_swap(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._pubsub_lock:
            try:
                pubsub = self._subscription()
                swapped = False
                while True:
                    # once one notification came, drain the rest without waiting
                    remaining = 0.0 if swapped else max(0.0, deadline - time.monotonic())
                    message = pubsub.get_message(timeout=remaining)
                    if message is None:
                        if swapped or time.monotonic() >= deadline:
                            return swapped
                    elif message["type"] in ("message", "subscribe"):
                        # a "subscribe" here is the client resubscribing after a reconnect: a
                        # notice may have been lost in the gap, so the pointer is checked at once
                        swapped = True
            except RedisError:
                self._drop_subscription()
                raise

    def _subscription(self) -> PubSub:
        """The swap-channel subscription, created on first use and confirmed before use,
        so a change made after the first ``wait_for_swap`` returns is never missed."""
        if self._pubsub is not None:
            return self._pubsub
        pubsub = self._redis.pubsub()
        self._pubsub = pubsub
        pubsub.subscribe(self._channel)
        limit = time.monotonic() + SUBSCRIBE_SECONDS
        while time.monotonic() < limit:
            message = pubsub.get_message(timeout=max(0.0, limit - time.monotonic()))
            if message is not None and message["type"] == "subscribe":
                return pubsub
        raise redis.TimeoutError(f"no confirmation of the subscription to {self._channel}")

    def _drop_subscription(self) -> None:
        if self._pubsub is not None:
            self._pubsub.close()
            self._pubsub = None

    # -- the trainer --------------------------------------------------------------

    def trainer_progress(self) -> tuple[int, bytes | None]:
        keys = [self._key("trainer", "through"), self._key("trainer", "state"), self._key("trainer", "state", "chunks")]
        values: Any = self._progress(keys=keys)
        through, *chunks = values
        state = None if chunks[0] is None else b"".join(chunks)
        return (0 if through is None else int(through)), state

    def trained_through(self) -> int:
        through: Any = self._redis.get(self._key("trainer", "through"))
        return 0 if through is None else int(through)

    def acquire_lease(self, owner: str, seconds: float) -> bool:
        milliseconds = max(1, round(seconds * 1000))
        return bool(int(self._acquire(keys=[self._key("trainer", "lease")], args=[owner, milliseconds])))

    def release_lease(self, owner: str) -> None:
        self._release(keys=[self._key("trainer", "lease")], args=[owner])

    def set_trainer_status(self, status: dict[str, Any]) -> None:
        self._redis.set(self._key("trainer", "status"), json.dumps(status))

    def trainer_status(self) -> dict[str, Any]:
        raw: Any = self._redis.get(self._key("trainer", "status"))
        return {} if raw is None else dict(json.loads(raw))

    # -- housekeeping -------------------------------------------------------------

    def ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except (RedisError, OSError):
            return False

    def close(self) -> None:
        with self._pubsub_lock:
            self._drop_subscription()
        self._redis.close()
        if isinstance(self._redis, redis.Redis):
            self._redis.connection_pool.disconnect()

    async def aclose(self) -> None:
        if self._async is not None:
            await close_async_client(self._async)
            self._async = None


def _clicks(raw: list[bytes]) -> list[Click]:
    return [Click.from_entry(json.loads(entry)) for entry in raw]


def _snapshot(fields: dict[bytes, bytes]) -> ClickSnapshot | None:
    # an empty ``hist``: not the user's first event of the period; none: logged before histories were
    hist = fields.get(b"hist")
    if not hist:
        return None
    return ClickSnapshot(tuple(map(Click.from_entry, json.loads(hist))), int(fields[b"keep"]))


def _interaction(fields: dict[bytes, bytes]) -> tuple[Interaction, ClickSnapshot | None]:
    event = Interaction(
        user_id=fields[b"user"].decode(),
        item_id=fields[b"item"].decode(),
        categories=tuple(json.loads(fields[b"cats"])),
        label=int(fields[b"label"]),
        timestamp=float(fields[b"ts"]),
    )
    return event, _snapshot(fields)


def _draft(version: NewVersion) -> VersionInfo:
    """The version's metadata, numbered 0 until the script hands out its number."""
    return VersionInfo(
        version=0,
        sha256=version.sha256,
        trained_through=version.trained_through,
        method=version.method,
        created=time.time(),
        size=len(version.weights),
        metrics=dict(version.metrics),
        note=version.note,
    )


def _meta_tail(draft: VersionInfo) -> str:
    """The meta JSON after ``{"version": 0``; the script writes the real number in front, so
    floats keep full precision (Lua's cjson would round them to 14 digits)."""
    text = json.dumps(draft.to_dict())
    head = '{"version": 0'
    assert text.startswith(head), text
    return text[len(head) :]
