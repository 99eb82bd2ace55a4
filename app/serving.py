"""The served model: one immutable reference, replaced whole by a watcher thread.

Requests read ``holder.current`` once and use that object to the end, so a
swap never mixes two versions in one response. The watcher loads and verifies
a new version off the request path and only then swaps the reference; a
version that fails to load is never served and the old one stays. A version
published as a delta is applied to the served model when that is its base (or
an earlier version of its chain): the tables it changes are copied and the
rows written into the copies, so the served model's tensors are never changed;
the result is served only once its digest matches the version's
(:mod:`trainer.core.registry`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from app.encoding import Encoded
from trainer.core.config import ModelConfig
from trainer.core.model import Params, request_logits
from trainer.core.registry import Loaded, ModelLoadError, resolve_version
from trainer.core.store.base import Store, VersionInfo

log = logging.getLogger("asmg.serving")


@dataclass(frozen=True)
class ServedModel:
    info: VersionInfo
    config: ModelConfig
    params: Params  # shared with later versions a delta left unchanged: never written to
    digests: dict[str, str] | None = field(default=None, compare=False)  # of its tensors, where known
    deltas: int = 0  # deltas applied to make it; 0: loaded from a full snapshot alone

    @property
    def version(self) -> int:
        return self.info.version

    @property
    def period(self) -> int:
        return self.info.trained_through + 1

    @torch.inference_mode()
    def score(self, requests: Sequence[Encoded]) -> list[list[float]]:
        """Click probabilities for several requests in one forward pass."""
        sizes = [len(r.items) for r in requests]
        out = request_logits(
            self.params,
            torch.tensor([r.user for r in requests]),
            torch.from_numpy(np.stack([r.history for r in requests])),
            torch.from_numpy(_stacked([r.history_cats for r in requests], np.stack)),
            torch.from_numpy(np.concatenate([r.items for r in requests])),
            torch.from_numpy(_stacked([r.item_cats for r in requests], np.concatenate)),
            torch.from_numpy(np.repeat(np.arange(len(requests)), sizes)),
            self.config.n_layers,
        )
        probabilities: list[float] = torch.sigmoid(out).tolist()
        scores, start = [], 0
        for size in sizes:
            scores.append(probabilities[start : start + size])
            start += size
        return scores


def _stacked(tables: list[np.ndarray], join: Callable[[list[np.ndarray]], np.ndarray]) -> np.ndarray:
    """Category tables joined, each first padded with -1 to the widest's width."""
    width = max(t.shape[-1] for t in tables)
    if any(t.shape[-1] != width for t in tables):
        lead = [(0, 0)] * (tables[0].ndim - 1)
        tables = [np.pad(t, [*lead, (0, width - t.shape[-1])], constant_values=-1) for t in tables]
    return join(tables)


class ModelHolder:
    """The one piece of mutable global state: which model answers requests."""

    def __init__(self) -> None:
        self.current: ServedModel | None = None

    def swap(self, model: ServedModel) -> None:
        self.current = model  # a single reference assignment: atomic under the GIL


class SwapWatcher:
    """Follows the store's pointer: on a notification, and every ``poll_seconds`` in case one was missed.

    A version it cannot serve (missing, corrupt, misfit, non-finite) is reported once, by log
    and ``on_failure``, and not tried again; the served version stays, and ``load_error`` says
    why the pointer is not followed. A replica that has no model yet (it just started) serves
    the newest kept version that loads instead, rather than nothing.
    """

    def __init__(
        self,
        store: Store,
        holder: ModelHolder,
        config: ModelConfig,
        poll_seconds: float,
        on_swap: Callable[[ServedModel], None] | None = None,
        on_failure: Callable[[int, str], None] | None = None,
    ) -> None:
        self.store = store
        self.holder = holder
        self.config = config
        self.poll_seconds = poll_seconds
        self.on_swap = on_swap
        self.on_failure = on_failure
        self.failed: dict[tuple[int, str], str] = {}  # (version, sha256 or "") that did not load → why
        self.load_error: str | None = None  # why the pointer's version is not served, if it is not
        self.delta_loads = 0  # versions loaded by applying deltas to the served model or a full snapshot
        self.full_loads = 0  # versions loaded from a full snapshot alone
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # admin routes sync too; one load at a time

    def sync(self) -> bool:
        """Serve the version the pointer names, if it is new and loads; True on a swap."""
        with self._lock:
            return self._sync()

    def _sync(self) -> bool:
        wanted = self.store.pointer().version
        current = self.holder.current
        if wanted is None or (current is not None and current.version == wanted):
            self.load_error = None
            return False
        loaded = self._load(wanted)
        if loaded is None and current is None:
            loaded = self._fallback(wanted)
        if loaded is None:
            return False
        self.holder.swap(loaded)
        log.info("now serving version %d (period %d)", loaded.version, loaded.period)
        if self.on_swap:
            self.on_swap(loaded)
        return True

    def _load(self, number: int) -> ServedModel | None:
        """Version ``number`` loaded and verified, or None (reported once) if it cannot be served."""
        info = self.store.version(number)
        key = (number, info.sha256 if info is not None else "")
        if key in self.failed:
            self.load_error = self.failed[key]
            return None
        current = self.holder.current
        served = None if current is None else Loaded(current.info, current.params, current.digests)
        try:
            if info is None:
                raise ModelLoadError(f"version {number} is not in the registry")
            loaded = resolve_version(self.store, number, self.config, served)
        except ModelLoadError as exc:
            self.failed[key] = self.load_error = str(exc)
            log.error("not serving version %d: %s", number, exc)
            if self.on_failure:
                self.on_failure(number, str(exc))
            return None
        self.load_error = None
        if loaded.deltas:
            self.delta_loads += 1
        else:
            self.full_loads += 1
        return ServedModel(loaded.info, self.config, loaded.params, loaded.digests, loaded.deltas)

    def _fallback(self, wanted: int) -> ServedModel | None:
        """The newest other kept version that loads, for a replica with nothing to serve."""
        error = self.load_error
        for info in reversed(self.store.versions()):
            if info.version != wanted and (model := self._load(info.version)) is not None:
                self.load_error = error
                log.warning("serving version %d until version %d can be loaded", info.version, wanted)
                return model
        self.load_error = error
        return None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="swap-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.poll_seconds + 5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.store.wait_for_swap(timeout=self.poll_seconds)
                self.sync()
            except Exception as exc:  # a store outage must not kill the watcher
                log.warning("swap watcher: store error (%s); retrying", exc)
                self._stop.wait(self.poll_seconds)
