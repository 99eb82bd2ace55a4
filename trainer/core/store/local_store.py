"""The embedded store: one SQLite database, ``{directory}/store.sqlite3``.

Safe for several threads and several processes on one directory (the API and
the trainer may run apart): each thread has its own connection, every write
is one ``BEGIN IMMEDIATE`` transaction (so writers queue instead of failing on
a lock upgrade), and WAL lets readers go on while one writes.
``synchronous=FULL`` makes a committed ``append`` survive a power cut, which is
what a 2xx from the API promises.

Tables: ``kv`` holds the scalars (open period and its start, version counter,
pointer, swap counter, trainer progress/status, lease), ``events`` the log with
the recent-click lists as a query over it (a user's first event of each period
carries a copy of their list as it stood just before it: ``hist``), ``period_users``
whose list each period has copied, ``models`` the registry,
``trainer_state`` the trainer state in chunks (SQLite caps a value at 1 GB).

A lock wait is bounded by ``busy_seconds`` (``ASMG_STORE_TIMEOUT_SECONDS`` for
an API process, ``ASMG_TRAINER_STORE_TIMEOUT_SECONDS`` for the trainer): past
it a request's write fails whole ("database is locked") and the API answers
503. The API's appends go through one writer thread per process, off the event
loop. The trainer lease is mirrored by an OS lock on ``trainer.lock`` that the
kernel releases when the holder's process dies, so a restarted trainer does
not wait out its predecessor's lease.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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

BUSY_SECONDS = 30.0  # how long opening the store waits for another process setting it up
SWAP_POLL_SECONDS = 0.05
STATE_CHUNK_BYTES = 256 << 20  # the trainer state is stored in blobs of at most this size
DROP_SLICE = 20_000  # log rows (by sequence number) one transaction of drop_logs covers

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    period INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    cats TEXT NOT NULL,
    label INTEGER NOT NULL,
    ts REAL NOT NULL,
    hist TEXT,
    hist_keep INTEGER
);
CREATE INDEX IF NOT EXISTS events_by_period ON events (period, seq);
CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id, label, seq);
CREATE TABLE IF NOT EXISTS period_users (period INTEGER, user_id TEXT, PRIMARY KEY (period, user_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS models (version INTEGER PRIMARY KEY, meta TEXT NOT NULL, weights BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS trainer_state (chunk INTEGER PRIMARY KEY, data BLOB NOT NULL);
"""

# kv keys
_PERIOD = "period"
_PERIOD_OPENED = "period.opened"
_LAST_VERSION = "version.last"
_POINTER_VERSION = "pointer.version"
_POINTER_PINNED = "pointer.pinned"
_SWAPS = "swaps"
_THROUGH = "trainer.through"
_STATE = "trainer.state"  # where a store made before trainer_state held the whole state
_STATUS = "trainer.status"
_LEASE_OWNER = "lease.owner"
_LEASE_EXPIRES = "lease.expires"
_DROPPED = "logs.dropped"


class LocalStore(Store):
    def __init__(self, directory: Path, busy_seconds: float = BUSY_SECONDS) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "store.sqlite3"
        self.busy_seconds = busy_seconds
        self._lock_path = directory / "trainer.lock"
        self._lock_fd: int | None = None  # open, and locked, while an owner using this object holds the lease
        self._writer: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._closed = False
        self._enable_wal(self._conn())
        with self._write() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            # a store made before histories were logged with events: their rows read as no history
            if "hist" not in {row[1] for row in conn.execute("PRAGMA table_info(events)")}:
                conn.execute("ALTER TABLE events ADD COLUMN hist TEXT")
                conn.execute("ALTER TABLE events ADD COLUMN hist_keep INTEGER")
        self._swap_lock = threading.Lock()
        self._seen_swaps = self._swaps()

    @staticmethod
    def _enable_wal(conn: sqlite3.Connection) -> None:
        # Persistent: set once, on the file. Switching needs an exclusive lock, for which SQLite
        # does not wait: processes opening a new store together (the workers of `asmg serve`)
        # get "database is locked" here, so wait and retry.
        deadline = time.monotonic() + BUSY_SECONDS
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    # -- connections and transactions ---------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError("the store is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # check_same_thread=False only so close() can close every thread's connection
            conn = sqlite3.connect(self.path, timeout=self.busy_seconds, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_seconds * 1000)}")
            conn.execute("PRAGMA synchronous = FULL")
            with self._connections_lock:
                self._connections.append(conn)
            self._local.conn = conn
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _get(conn: sqlite3.Connection, key: str, default: Any = None) -> Any:
        row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    @staticmethod
    def _set(conn: sqlite3.Connection, key: str, value: Any) -> None:
        conn.execute(
            "INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _read(self, *keys: str) -> dict[str, Any]:
        """Several kv entries from one snapshot (a single statement)."""
        marks = ", ".join("?" * len(keys))
        return dict(self._conn().execute(f"SELECT key, value FROM kv WHERE key IN ({marks})", keys).fetchall())

    def _notify(self, conn: sqlite3.Connection) -> None:
        self._set(conn, _SWAPS, int(self._get(conn, _SWAPS, 0)) + 1)

    def _swaps(self) -> int:
        return int(self._read(_SWAPS).get(_SWAPS, 0))

    # -- the interaction log ------------------------------------------------------

    def open_period(self) -> int:
        return int(self._read(_PERIOD).get(_PERIOD, 1))

    def append(self, events: Sequence[Interaction], history_length: int) -> int:
        if not events:
            return self.open_period()
        with self._write() as conn:
            period = int(self._get(conn, _PERIOD, 1))
            # A user's first event of the period is logged with their click list (a query over the
            # log, read inside this write) as it stood just before it; their later ones need no
            # copy, since the period's events say how the list moved (rebuild_histories).
            rows, checked = [], set()
            for e in events:
                hist, keep = None, None
                if history_length > 0 and e.user_id not in checked:
                    checked.add(e.user_id)
                    first = conn.execute(
                        "INSERT OR IGNORE INTO period_users (period, user_id) VALUES (?, ?)", (period, e.user_id)
                    ).rowcount
                    if first:
                        hist, keep = _list(self._recent(conn, e.user_id, history_length)), history_length
                cats = json.dumps(list(e.categories))
                rows.append((period, e.user_id, e.item_id, cats, int(e.label), float(e.timestamp), hist, keep))
            conn.executemany(
                "INSERT INTO events (period, user_id, item_id, cats, label, ts, hist, hist_keep)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return period

    @staticmethod
    def _recent(conn: sqlite3.Connection, user_id: str, limit: int) -> list[str]:
        """The user's latest ``limit`` positives as JSON ``[item_id, [cats...]]`` texts, oldest first."""
        if limit <= 0:
            return []
        rows = conn.execute(
            "SELECT json_array(item_id, json(cats)) FROM events"
            " WHERE user_id = ? AND label = 1 ORDER BY seq DESC LIMIT ?",
            (user_id, limit),
        ).fetchall()
        return [text for (text,) in reversed(rows)]

    async def append_async(self, events: Sequence[Interaction], history_length: int) -> int:
        # one writer thread: appends queue in order instead of contending for SQLite's lock
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-append")
        return await asyncio.get_running_loop().run_in_executor(self._writer, self.append, events, history_length)

    def rollover(self) -> int:
        with self._write() as conn:
            period = int(self._get(conn, _PERIOD, 1))
            if conn.execute("SELECT 1 FROM events WHERE period = ? LIMIT 1", (period,)).fetchone() is None:
                raise EmptyPeriod(f"period {period} holds no events")
            self._set(conn, _PERIOD, period + 1)
            self._set(conn, _PERIOD_OPENED, time.time())
        return period

    def period_started(self) -> float | None:
        opened = self._read(_PERIOD_OPENED).get(_PERIOD_OPENED)
        return None if opened is None else float(opened)

    def period_size(self, period: int) -> int:
        self._check_kept(period)
        return int(self._conn().execute("SELECT COUNT(*) FROM events WHERE period = ?", (period,)).fetchone()[0])

    def _check_kept(self, period: int) -> None:
        dropped = int(self._get(self._conn(), _DROPPED, 0))
        if period <= dropped:
            raise DroppedPeriod(f"period {period}'s log was deleted (kept from period {dropped + 1} on)")

    def drop_logs(self, through: int, history_length: int) -> int:
        # read, not written: the write lock is taken slice by slice below
        values = self._read(_THROUGH, _DROPPED)
        trained, dropped = int(values.get(_THROUGH, 0)), int(values.get(_DROPPED, 0))
        if through > trained:
            raise StoreError(f"refusing to drop the logs through period {through}: trained through {trained}")
        if through <= dropped:
            return 0
        periods, first, last = (
            self._conn()
            .execute(
                "SELECT COUNT(DISTINCT period), MIN(seq), MAX(seq) FROM events WHERE period > ? AND period <= ?",
                (dropped, through),
            )
            .fetchone()
        )
        # in slices of the log, a transaction each, so that appends wait for one slice at most; a
        # drop cut short (the process killed) is redone whole by the next, since the mark moves last
        for start in range(first or 0, (last or -1) + 1, DROP_SLICE):
            with self._write() as conn:
                # the recent-click lists are a query over the log: each user's newest positives stay
                conn.execute(
                    "DELETE FROM events WHERE seq >= ? AND seq < ? AND period > ? AND period <= ? AND seq NOT IN ("
                    " SELECT seq FROM (SELECT seq,"
                    "  ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY seq DESC) AS newest"
                    "  FROM events WHERE label = 1 AND user_id IN ("
                    "   SELECT user_id FROM events WHERE seq >= ? AND seq < ? AND label = 1))"
                    " WHERE newest <= ?)",
                    (start, start + DROP_SLICE, dropped, through, start, start + DROP_SLICE, history_length),
                )
        with self._write() as conn:
            conn.execute("DELETE FROM period_users WHERE period <= ?", (through,))
            self._set(conn, _DROPPED, max(through, int(self._get(conn, _DROPPED, 0))))
        return int(periods)

    def read_period(self, period: int) -> list[Interaction]:
        self._check_kept(period)
        rows = self._conn().execute(
            "SELECT user_id, item_id, cats, label, ts, hist, hist_keep FROM events WHERE period = ? ORDER BY seq",
            (period,),
        )
        return rebuild_histories(
            (
                Interaction(user, item, tuple(json.loads(cats)), int(label), float(ts)),
                None if hist is None else ClickSnapshot(tuple(map(Click.from_entry, json.loads(hist))), int(keep)),
            )
            for user, item, cats, label, ts, hist, keep in rows
        )

    def recent_clicks(self, user_id: str, limit: int) -> list[Click]:
        return [Click.from_entry(json.loads(text)) for text in self._recent(self._conn(), user_id, limit)]

    # -- the model registry -------------------------------------------------------

    def publish_initial(self, version: NewVersion) -> VersionInfo | None:
        with self._write() as conn:
            if self._get(conn, _LAST_VERSION) is not None:
                return None
            info = _info(version, 1)
            self._insert_version(conn, info, version.weights)
            self._set(conn, _POINTER_VERSION, 1)
            self._set(conn, _POINTER_PINNED, 0)
            self._notify(conn)
        return info

    def commit_period(self, version: NewVersion, trainer_state: bytes, keep: int) -> VersionInfo:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, not {keep}")
        with self._write() as conn:
            through = int(self._get(conn, _THROUGH, 0))
            if version.trained_through != through + 1:
                raise StoreError(
                    f"refusing to publish a model trained through period {version.trained_through}: "
                    f"the store is trained through period {through}"
                )
            info = _info(version, int(self._get(conn, _LAST_VERSION, 0)) + 1)
            self._insert_version(conn, info, version.weights)
            self._set(conn, _THROUGH, version.trained_through)
            conn.execute("DELETE FROM trainer_state")
            conn.execute("DELETE FROM kv WHERE key = ?", (_STATE,))
            view = memoryview(trainer_state)
            conn.executemany(
                "INSERT INTO trainer_state (chunk, data) VALUES (?, ?)",
                (
                    (i, view[at : at + STATE_CHUNK_BYTES])
                    for i, at in enumerate(range(0, max(len(view), 1), STATE_CHUNK_BYTES))
                ),
            )
            if not self._get(conn, _POINTER_PINNED, 0):
                self._set(conn, _POINTER_VERSION, info.version)
                self._set(conn, _POINTER_PINNED, 0)
            conn.execute(
                "DELETE FROM models WHERE version NOT IN (SELECT version FROM models ORDER BY version DESC LIMIT ?) "
                "AND version IS NOT ?",
                (keep, self._get(conn, _POINTER_VERSION)),
            )
            self._notify(conn)
        return info

    def _insert_version(self, conn: sqlite3.Connection, info: VersionInfo, weights: bytes) -> None:
        conn.execute(
            "INSERT INTO models (version, meta, weights) VALUES (?, ?, ?)",
            (info.version, json.dumps(info.to_dict()), weights),
        )
        self._set(conn, _LAST_VERSION, info.version)

    def versions(self) -> list[VersionInfo]:
        rows = self._conn().execute("SELECT meta FROM models ORDER BY version").fetchall()
        return [VersionInfo.from_dict(json.loads(meta)) for (meta,) in rows]

    def version(self, number: int) -> VersionInfo | None:
        row = self._conn().execute("SELECT meta FROM models WHERE version = ?", (number,)).fetchone()
        return None if row is None else VersionInfo.from_dict(json.loads(row[0]))

    def weights(self, number: int) -> bytes | None:
        row = self._conn().execute("SELECT weights FROM models WHERE version = ?", (number,)).fetchone()
        return None if row is None else bytes(row[0])

    def pointer(self) -> Pointer:
        values = self._read(_POINTER_VERSION, _POINTER_PINNED)
        version = values.get(_POINTER_VERSION)
        return Pointer(None if version is None else int(version), bool(values.get(_POINTER_PINNED, 0)))

    def activate(self, number: int) -> Pointer:
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM models WHERE version = ?", (number,)).fetchone() is None:
                raise UnknownVersion(f"version {number} is not in the registry")
            self._set(conn, _POINTER_VERSION, number)
            self._set(conn, _POINTER_PINNED, 1)
            self._notify(conn)
        return Pointer(number, True)

    def unpin(self) -> Pointer:
        with self._write() as conn:
            newest = conn.execute("SELECT MAX(version) FROM models").fetchone()[0]
            self._set(conn, _POINTER_VERSION, newest)
            self._set(conn, _POINTER_PINNED, 0)
            self._notify(conn)
        return Pointer(None if newest is None else int(newest), False)

    def wait_for_swap(self, timeout: float) -> bool:
        # no pub/sub in SQLite: poll the counter every pointer change bumps
        deadline = time.monotonic() + timeout
        with self._swap_lock:
            while True:
                swaps = self._swaps()
                if swaps != self._seen_swaps:
                    self._seen_swaps = swaps
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                time.sleep(min(SWAP_POLL_SECONDS, remaining))

    # -- the trainer --------------------------------------------------------------

    def trainer_progress(self) -> tuple[int, bytes | None]:
        conn = self._conn()
        conn.execute("BEGIN")  # one snapshot of progress and state
        try:
            values = self._read(_THROUGH, _STATE)
            chunks = [bytes(data) for (data,) in conn.execute("SELECT data FROM trainer_state ORDER BY chunk")]
        finally:
            conn.execute("COMMIT")
        state = b"".join(chunks) if chunks else values.get(_STATE)
        return int(values.get(_THROUGH, 0)), (None if state is None else bytes(state))

    def trained_through(self) -> int:
        return int(self._read(_THROUGH).get(_THROUGH, 0))

    def acquire_lease(self, owner: str, seconds: float) -> bool:
        with self._write() as conn:
            now = time.time()
            holder = self._get(conn, _LEASE_OWNER)
            held = holder is not None and holder != owner and float(self._get(conn, _LEASE_EXPIRES, 0.0)) > now
            if held and not self._holder_gone():
                return False
            self._set(conn, _LEASE_OWNER, owner)
            self._set(conn, _LEASE_EXPIRES, now + seconds)
            self._lock_process()
        return True

    def _holder_gone(self) -> bool:
        """Whether the lease holder's process has died: no process holds ``trainer.lock``.
        (A holder using this very object is alive; its lock is this object's.)"""
        return self._lock_fd is None and self._lock_process()

    def _lock_process(self) -> bool:
        """Hold ``trainer.lock`` for this object; False if another process (or store object) holds it."""
        if self._lock_fd is not None:
            return True
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def _unlock_process(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases its lock
            self._lock_fd = None

    def release_lease(self, owner: str) -> None:
        with self._write() as conn:
            if self._get(conn, _LEASE_OWNER) == owner:
                conn.execute("DELETE FROM kv WHERE key IN (?, ?)", (_LEASE_OWNER, _LEASE_EXPIRES))
                self._unlock_process()

    def set_trainer_status(self, status: dict[str, Any]) -> None:
        with self._write() as conn:
            self._set(conn, _STATUS, json.dumps(status))

    def trainer_status(self) -> dict[str, Any]:
        raw = self._read(_STATUS).get(_STATUS)
        return {} if raw is None else dict(json.loads(raw))

    # -- housekeeping -------------------------------------------------------------

    def ping(self) -> bool:
        try:
            self._conn().execute("SELECT 1").fetchone()
        except (sqlite3.Error, StoreError):
            return False
        return True

    def close(self) -> None:
        self._closed = True
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        self._unlock_process()
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()


def _info(version: NewVersion, number: int) -> VersionInfo:
    return VersionInfo(
        version=number,
        sha256=version.sha256,
        trained_through=version.trained_through,
        method=version.method,
        created=time.time(),
        size=len(version.weights),
        metrics=dict(version.metrics),
        note=version.note,
    )


def _list(entries: list[str]) -> str:
    """JSON texts as one JSON list."""
    return f"[{','.join(entries)}]"
