"""What the service keeps, independent of where it keeps it.

Two implementations pass one contract test suite (``tests/test_store_contract.py``):
``RedisStore`` for production and ``LocalStore`` (SQLite in one directory) for
the embedded default. Both API replicas and the trainer use only this interface.

Periods are numbered from 1. Exactly one period is *open*; ``append`` puts a
batch into the open period and ``rollover`` closes it and opens the next, and
the two are atomic with respect to each other, so every event lands in exactly
one period. A closed period is trained once: the trainer's progress
(``trained_through``) moves forward only together with the version it
publishes (``commit_period``).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any


class StoreError(RuntimeError):
    """The store refused an operation; the message says why."""


class EmptyPeriod(StoreError):
    """A rollover was asked for while the open period holds no events."""


class UnknownVersion(StoreError):
    pass


class DroppedPeriod(StoreError):
    """The period's log was deleted under the retention setting (:meth:`Store.drop_logs`)."""


@dataclass(frozen=True)
class Click:
    """One positive, as kept in a user's recent-click list."""

    item_id: str
    categories: tuple[str, ...]

    @classmethod
    def from_entry(cls, entry: Any) -> Click:
        """A click-list entry as both stores keep it: the JSON ``[item_id, [cats...]]``, parsed."""
        item, cats = entry
        return cls(str(item), tuple(cats))


@dataclass(frozen=True)
class Interaction:
    """One logged impression. Ids are strings (the API turns ints into strings)."""

    user_id: str
    item_id: str
    categories: tuple[str, ...]
    label: int  # 0 or 1
    timestamp: float  # seconds since the epoch, as the client said or as received
    # the user's recent clicks just before this event, oldest first: kept by the store when it
    # logs the event (what ``append`` is given here is ignored), read back with it
    history: tuple[Click, ...] = ()


@dataclass(frozen=True)
class ClickSnapshot:
    """A user's recent-click list as logged with their first event of a period."""

    clicks: tuple[Click, ...]
    keep: int  # the list's length limit when it was taken


def rebuild_histories(rows: Iterable[tuple[Interaction, ClickSnapshot | None]]) -> list[Interaction]:
    """A period's events in log order, each with its user's click list as it stood just before it.

    A store snapshots the list only with a user's first event of each period; later events'
    lists follow from that snapshot and the period's own clicks, replayed here exactly as
    ``append`` pushed them. A user with no snapshot (events logged before histories were)
    has an empty history.
    """
    lists: dict[str, tuple[list[Click], int]] = {}
    out = []
    for event, snapshot in rows:
        if snapshot is not None:
            lists[event.user_id] = (list(snapshot.clicks), snapshot.keep)
        clicks, keep = lists.get(event.user_id, ([], 0))
        out.append(replace(event, history=tuple(clicks)))
        if event.label == 1 and keep > 0:
            clicks.append(Click(event.item_id, event.categories))
            del clicks[:-keep]
    return out


@dataclass(frozen=True)
class VersionInfo:
    """Metadata of one immutable model version."""

    version: int
    sha256: str  # of the weights blob
    trained_through: int  # last period the model learnt from; 0 for the initial model
    method: str  # the update method, or "initial"
    created: float  # seconds since the epoch
    size: int  # bytes of the weights blob
    metrics: dict[str, float] = field(default_factory=dict)
    note: str = ""
    # a delta's base version (None: a full snapshot) and the digest of the whole model the version
    # stands for (trainer.core.delta.model_digest; "" where not recorded). The blob says both too,
    # and it is what replicas trust: these are for reading the registry without fetching weights
    base: int | None = None
    digest: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = {
            "version": self.version,
            "sha256": self.sha256,
            "trained_through": self.trained_through,
            "method": self.method,
            "created": self.created,
            "size": self.size,
            "metrics": dict(self.metrics),
            "note": self.note,
        }
        # left out where not recorded: /admin/models answers with these keys (app/schemas.py VersionOut)
        if self.base is not None:
            data["base"] = self.base
        if self.digest:
            data["digest"] = self.digest
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VersionInfo:
        return cls(
            version=int(data["version"]),
            sha256=str(data["sha256"]),
            trained_through=int(data["trained_through"]),
            method=str(data["method"]),
            created=float(data["created"]),
            size=int(data["size"]),
            metrics={str(k): float(v) for k, v in data.get("metrics", {}).items()},
            note=str(data.get("note", "")),
            base=None if data.get("base") is None else int(data["base"]),
            digest=str(data.get("digest") or ""),
        )


@dataclass(frozen=True)
class Pointer:
    """Which version replicas should serve, and whether an operator pinned it."""

    version: int | None
    pinned: bool


@dataclass(frozen=True)
class NewVersion:
    """A version about to be published: everything but its number."""

    weights: bytes
    sha256: str
    trained_through: int
    method: str
    metrics: dict[str, float] = field(default_factory=dict)
    note: str = ""
    base: int | None = None  # as VersionInfo.base
    digest: str = ""  # as VersionInfo.digest


class Store(ABC):
    # -- the interaction log ------------------------------------------------------

    @abstractmethod
    def open_period(self) -> int:
        """The period new events land in (1 before any rollover)."""

    @abstractmethod
    def append(self, events: Sequence[Interaction], history_length: int) -> int:
        """Durably log ``events`` (in order) in the open period and return it.

        Atomically with the log write, each positive (label 1) joins its user's
        recent-click list (the newest ``history_length`` clicks), and each event is
        logged with that list as it stood just before it (:attr:`Interaction.history`,
        kept as one snapshot per user and period: :func:`rebuild_histories`). The
        list is the one source of user histories: the API scores with it
        (:meth:`recent_clicks`) and the trainer learns from what it was.
        """

    async def append_async(self, events: Sequence[Interaction], history_length: int) -> int:
        """:meth:`append` for the API's event loop, which it never blocks."""
        return await asyncio.to_thread(self.append, events, history_length)

    @abstractmethod
    def rollover(self) -> int:
        """Close the open period and return its number; raise
        :class:`EmptyPeriod` (and change nothing) when it holds no events."""

    @abstractmethod
    def period_started(self) -> float | None:
        """When the open period was opened (seconds since the epoch), None before the first rollover."""

    @abstractmethod
    def period_size(self, period: int) -> int:
        """Events logged in ``period`` (0 for a period never opened); :class:`DroppedPeriod` if dropped."""

    @abstractmethod
    def read_period(self, period: int) -> list[Interaction]:
        """Every event of ``period`` in log order; :class:`DroppedPeriod` if dropped."""

    @abstractmethod
    def drop_logs(self, through: int, history_length: int) -> int:
        """Delete the logs of every period up to ``through``, all of which must be
        trained (:class:`StoreError` otherwise, and nothing changes). Each user's
        newest ``history_length`` positives stay for :meth:`recent_clicks`.
        Returns how many periods' logs this call deleted."""

    @abstractmethod
    def recent_clicks(self, user_id: str, limit: int) -> list[Click]:
        """The user's latest ``limit`` positives, oldest first."""

    async def recent_clicks_async(self, user_id: str, limit: int) -> list[Click]:
        """:meth:`recent_clicks` for the API's event loop, which it never blocks."""
        return await asyncio.to_thread(self.recent_clicks, user_id, limit)

    # -- the model registry -------------------------------------------------------

    @abstractmethod
    def publish_initial(self, version: NewVersion) -> VersionInfo | None:
        """Publish ``version`` as version 1 and point at it, only if the
        registry has never held a version; return None when it has."""

    @abstractmethod
    def commit_period(self, version: NewVersion, trainer_state: bytes, keep: int) -> VersionInfo:
        """In one atomic step: add the next version number, set
        ``trained_through = version.trained_through`` and the trainer state,
        move the pointer to it unless pinned, drop versions beyond the newest
        ``keep`` (never the one the pointer names), and notify replicas.

        Raises :class:`StoreError` unless ``version.trained_through`` is
        exactly ``trained_through + 1``, so a period is never published twice.
        """

    @abstractmethod
    def versions(self) -> list[VersionInfo]:
        """Every kept version, oldest first."""

    @abstractmethod
    def version(self, number: int) -> VersionInfo | None: ...

    @abstractmethod
    def weights(self, number: int) -> bytes | None:
        """The weights blob of a kept version, or None."""

    @abstractmethod
    def pointer(self) -> Pointer: ...

    @abstractmethod
    def activate(self, number: int) -> Pointer:
        """Point at a kept version and pin it; :class:`UnknownVersion` if not kept."""

    @abstractmethod
    def unpin(self) -> Pointer:
        """Unpin and point at the newest version."""

    @abstractmethod
    def wait_for_swap(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a pointer-change notification;
        True if one came. Callers still re-read :meth:`pointer` periodically,
        since a notification can be missed."""

    # -- the trainer --------------------------------------------------------------

    @abstractmethod
    def trainer_progress(self) -> tuple[int, bytes | None]:
        """``(trained_through, trainer_state)``; ``(0, None)`` before any training."""

    def trained_through(self) -> int:
        """The last period committed; cheaper than :meth:`trainer_progress` where a store can."""
        return self.trainer_progress()[0]

    @abstractmethod
    def acquire_lease(self, owner: str, seconds: float) -> bool:
        """Take or renew the trainer lease; False while another owner holds it (until it lapses
        or is released; a store may also know sooner that its holder is gone)."""

    @abstractmethod
    def release_lease(self, owner: str) -> None:
        """Give the lease up if ``owner`` holds it."""

    @abstractmethod
    def set_trainer_status(self, status: dict[str, Any]) -> None:
        """Replace the trainer's status record (JSON-able), for /admin/status and metrics."""

    @abstractmethod
    def trainer_status(self) -> dict[str, Any]:
        """The last status record, or {}."""

    # -- housekeeping -------------------------------------------------------------

    @abstractmethod
    def ping(self) -> bool:
        """True when the store answers."""

    @abstractmethod
    def close(self) -> None: ...

    async def aclose(self) -> None:  # noqa: B027 - nothing to close unless a store opens async resources
        """Close what the ``*_async`` methods opened, from the event loop that used them."""
