"""The served model: one immutable reference, replaced whole by a watcher thread.

Requests read ``holder.current`` once and use that object to the end, so a
swap never mixes two versions in one response. The watcher loads and verifies
a new version off the request path and only then swaps the reference; a
version that fails to load is never served and the old one stays.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch

from trainer.config import ModelConfig
from trainer.features import ItemRef, history_rows, item_ref, item_rows, user_row
from trainer.model import Params, request_logits
from trainer.store.base import Click, Store, VersionInfo
from trainer.worker import ModelLoadError, verified_params

log = logging.getLogger("asmg.serving")


@dataclass(frozen=True)
class Encoded:
    """A scoring request as model rows: the user, the candidates, the history (oldest first)."""

    user: int
    items: list[ItemRef]
    history: list[ItemRef]


# popular items come back in every request: one lookup instead of one hash per id and category
_cached_item_ref = lru_cache(maxsize=1 << 18)(item_ref)


def encode_request(
    config: ModelConfig, user_id: str, items: Sequence[tuple[str, tuple[str, ...]]], history: Sequence[Click]
) -> Encoded:
    """One request's ids → model rows. Hashing depends on the config alone, which
    every version of a service shares, so it happens before a version is picked."""
    recent = history[-config.history_length :] if config.history_length else []
    return Encoded(
        user_row(user_id, config),
        [_cached_item_ref(item, cats, config) for item, cats in items],
        [_cached_item_ref(c.item_id, c.categories, config) for c in recent],
    )


@dataclass(frozen=True)
class ServedModel:
    info: VersionInfo
    config: ModelConfig
    params: Params

    @property
    def version(self) -> int:
        return self.info.version

    @property
    def period(self) -> int:
        return self.info.trained_through + 1

    @torch.inference_mode()
    def score(self, requests: Sequence[Encoded]) -> list[list[float]]:
        """Click probabilities for several requests in one forward pass."""
        config = self.config
        items, item_cats = item_rows([ref for r in requests for ref in r.items])
        hist_items, hist_cats = history_rows([r.history for r in requests], config.history_length)
        owner = torch.repeat_interleave(torch.tensor([len(r.items) for r in requests]))
        users = torch.tensor([r.user for r in requests])
        out = request_logits(self.params, users, hist_items, hist_cats, items, item_cats, owner, config.n_layers)
        probabilities: list[float] = torch.sigmoid(out).tolist()
        scores, start = [], 0
        for r in requests:
            scores.append(probabilities[start : start + len(r.items)])
            start += len(r.items)
        return scores


class ModelHolder:
    """The one piece of mutable global state: which model answers requests."""

    def __init__(self) -> None:
        self.current: ServedModel | None = None

    def swap(self, model: ServedModel) -> None:
        self.current = model  # a single reference assignment: atomic under the GIL


class SwapWatcher:
    """Follows the store's pointer: on a notification, and every ``poll_seconds`` in case one was missed."""

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
        self.failed: set[str] = set()  # sha256 of blobs that did not load: not retried
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
            return False
        info = self.store.version(wanted)
        if info is None or info.sha256 in self.failed:
            return False
        try:
            params = verified_params(info, self.store.weights(wanted), self.config)
        except ModelLoadError as exc:
            self.failed.add(info.sha256)
            log.error("not serving version %d: %s", wanted, exc)
            if self.on_failure:
                self.on_failure(wanted, str(exc))
            return False
        model = ServedModel(info, self.config, params)
        self.holder.swap(model)
        log.info("now serving version %d (period %d)", model.version, model.period)
        if self.on_swap:
            self.on_swap(model)
        return True

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
            except Exception:  # a store outage must not kill the watcher
                log.exception("swap watcher: store error; retrying")
                self._stop.wait(self.poll_seconds)
