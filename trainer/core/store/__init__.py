"""Where the service keeps its state: Redis in production, SQLite embedded."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainer.core.store.base import (
    Click,
    DroppedPeriod,
    EmptyPeriod,
    Interaction,
    NewVersion,
    Pointer,
    Store,
    StoreError,
    UnknownVersion,
    VersionInfo,
)
from trainer.core.store.local_store import LocalStore
from trainer.core.store.redis_store import RedisStore

if TYPE_CHECKING:
    from trainer.core.settings import Settings

__all__ = [
    "Click",
    "DroppedPeriod",
    "EmptyPeriod",
    "Interaction",
    "LocalStore",
    "NewVersion",
    "Pointer",
    "RedisStore",
    "Store",
    "StoreError",
    "UnknownVersion",
    "VersionInfo",
    "open_store",
]


def open_store(settings: Settings, *, for_trainer: bool = False) -> Store:
    """Redis when ``ASMG_REDIS_URL`` is set, else the embedded SQLite store in ``ASMG_STATE_DIR``;
    with the API's wait limit (``ASMG_STORE_TIMEOUT_SECONDS``), or the trainer's."""
    timeout = settings.trainer_store_timeout_seconds if for_trainer else settings.store_timeout_seconds
    if settings.redis_url:
        return RedisStore(settings.redis_url, settings.key_prefix, timeout, mode=settings.redis_mode)
    return LocalStore(settings.state_dir, timeout)
