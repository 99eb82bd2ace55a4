"""The version registry's rules: what may be published and what may be served.

A version is published only with finite weights, the sha256 of its blob and the
digest of the whole model it stands for (:mod:`trainer.core.delta`). Its blob
is a full snapshot, or a delta on top of the version before it when the period
changed a small share of the embedding rows; the trainer publishes a full
snapshot every ``ASMG_FULL_SNAPSHOT_EVERY`` versions by number
(:func:`full_turn`), whenever it does not hold the version before, and
whenever a delta would not be much smaller, and keeps every kept version's
chain whole (:func:`keep_for`).

A version is served only when every blob of its chain (its nearest full
snapshot then each delta in order; on a replica, the deltas since the version
it serves) matches its checksum and unpickles, the snapshot fits the
configured model shape and holds finite weights, every delta fits its base and
brings finite values, and the model they make matches the version's digest.
The API and the trainer both go through here.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from trainer.core.config import ModelConfig
from trainer.core.delta import (
    Delta,
    DeltaError,
    apply_delta,
    check_digest,
    combine,
    delta_bytes,
    delta_rows,
    delta_size,
    full_size,
    read_blob,
    tensor_digests,
)
from trainer.core.model import Params, checkpoint_bytes, load_checkpoint, seeded_model
from trainer.core.settings import Settings
from trainer.core.store.base import NewVersion, Store, VersionInfo

log = logging.getLogger("asmg.registry")


class ModelLoadError(RuntimeError):
    """A version's weights are missing, corrupt, or do not fit this service's model."""


class NonFiniteWeights(ModelLoadError):
    """Weights holding NaN or infinity: never published, never served."""


def all_finite(params: Params) -> bool:
    return all(bool(torch.isfinite(value).all()) for value in params.values())


# a delta is published only while its tensors take at most this share of the full snapshot's bytes
DELTA_MAX_SHARE = 0.5
SERVED_BASE = "[from the served model]"  # marks a failure that loading from the full snapshot may not repeat


@dataclass(frozen=True)
class Loaded:
    """A verified model: its version's metadata, its weights, and its tensors' digests where known."""

    info: VersionInfo
    params: Params
    digests: dict[str, str] | None = None
    deltas: int = 0  # deltas applied to make it (0: loaded from a full snapshot alone)


@dataclass(frozen=True)
class Published:
    """What the trainer keeps of the version it published last: the base of the next delta."""

    version: int
    params: Params  # its own copy, never changed
    digests: dict[str, str]


def full_turn(version: int, every: int) -> bool:
    """Whether version ``version`` must be a full snapshot: versions 1, 1 + every, 1 + 2·every, ..."""
    return every <= 1 or (version - 1) % every == 0


def keep_for(next_version: int, keep: int, every: int, pinned: int | None = None) -> int:
    """How many of the newest versions the commit of ``next_version`` tells the store to keep: the newest
    ``keep``, and back to the full snapshot each of them (and a ``pinned`` older version) is a delta of.

    The store keeps the newest versions by number (and the one the pointer names); a delta's chain runs
    back to its nearest full snapshot, which is never older than its :func:`full_turn` version. Keeping
    from there on means every kept version can be loaded."""

    def turn(version: int) -> int:
        return version if every <= 1 else version - (version - 1) % every

    oldest = max(1, next_version - keep + 1)
    need = next_version - turn(oldest) + 1
    if pinned is not None and pinned < oldest:
        need = max(need, next_version - turn(pinned) + 1)
    return max(keep, need)


def publication(
    config: ModelConfig,
    params: Params,
    trained_through: int,
    method: str,
    metrics: dict[str, float] | None = None,
    note: str = "",
    base: Published | None = None,
) -> tuple[NewVersion, dict[str, str]]:
    """The version to publish for ``params`` and its tensors' digests: a delta on ``base`` (the version
    before it) when that holds at most ``DELTA_MAX_SHARE`` of a full snapshot's bytes, else a full snapshot."""
    if not all_finite(params):
        raise NonFiniteWeights(f"refusing to publish weights with NaN or infinity (trained through {trained_through})")
    meta = {"trained_through": trained_through, "method": method}
    finite = {k: float(v) for k, v in (metrics or {}).items() if math.isfinite(v)}
    rows = None if base is None else delta_rows(base.params, params, config)
    if base is None or rows is None:
        digests = tensor_digests(params)
    else:  # a table no row of which changed keeps its digest
        digests = tensor_digests(params, {name: base.digests[name] for name, index in rows.items() if not len(index)})
    based_on: int | None = None
    if base is not None and rows is not None and delta_size(params, rows) <= DELTA_MAX_SHARE * full_size(params):
        blob = delta_bytes(config, params, rows, meta, base.version, combine(base.params, base.digests), digests)
        based_on = base.version
    else:
        blob = checkpoint_bytes(config, params, {**meta, "digests": digests})
    sha = hashlib.sha256(blob).hexdigest()
    return NewVersion(blob, sha, trained_through, method, finite, note, based_on, combine(params, digests)), digests


def new_version(
    config: ModelConfig,
    params: Params,
    trained_through: int,
    method: str,
    metrics: dict[str, float] | None = None,
    note: str = "",
) -> NewVersion:
    """A full snapshot of ``params`` to publish."""
    return publication(config, params, trained_through, method, metrics, note)[0]


Snapshot = tuple[ModelConfig, Params, dict[str, Any]]


def _blob(info: VersionInfo, blob: bytes | None) -> Snapshot | Delta:
    """A version's blob, read, only if it is whole."""
    if blob is None:
        raise ModelLoadError(f"version {info.version}: weights are missing")
    if hashlib.sha256(blob).hexdigest() != info.sha256:
        raise ModelLoadError(f"version {info.version}: sha256 of the weights does not match its metadata")
    try:
        return read_blob(blob)
    except Exception as exc:  # a blob that passed the checksum but does not unpickle
        raise ModelLoadError(f"version {info.version}: unreadable checkpoint ({exc})") from exc


def _snapshot(info: VersionInfo, item: Snapshot, config: ModelConfig) -> Loaded:
    stored, params, meta = item
    if stored != config:
        raise ModelLoadError(f"version {info.version}: model shape {stored} differs from the configured {config}")
    if not all_finite(params):
        raise NonFiniteWeights(f"version {info.version}: the weights hold NaN or infinity")
    digests = meta.get("digests")  # as the trainer took them (snapshots published before deltas have none)
    known = {str(k): str(v) for k, v in digests.items()} if isinstance(digests, dict) else None
    return Loaded(info, params, known if known is not None and known.keys() == params.keys() else None)


def verified_params(info: VersionInfo, blob: bytes | None, config: ModelConfig) -> Params:
    """The weights of full snapshot ``info``, only if the blob is whole and fits ``config``."""
    item = _blob(info, blob)
    if isinstance(item, Delta):
        raise ModelLoadError(f"version {info.version}: a delta of version {item.base}; load it with its base")
    return _snapshot(info, item, config).params


def resolve_version(store: Store, number: int, config: ModelConfig, served: Loaded | None = None) -> Loaded:
    """Version ``number``, verified. Its chain of deltas is applied to ``served`` (a verified model the
    caller holds) when the chain reaches that version, else to the chain's full snapshot; should the
    first fail, the second is tried."""
    if served is not None:
        try:
            return _resolve(store, number, config, served)
        except ModelLoadError as exc:
            if SERVED_BASE not in str(exc):
                raise
            log.warning("%s; loading version %d from its full snapshot instead", exc, number)
    return _resolve(store, number, config, None)


def _resolve(store: Store, number: int, config: ModelConfig, served: Loaded | None) -> Loaded:
    chain: list[tuple[VersionInfo, Delta]] = []  # newest first
    at = number
    while True:
        if served is not None and chain and at == served.info.version:
            start = served
            break
        info = store.version(at)
        if info is None:
            after = f" (the base of version {chain[-1][0].version})" if chain else ""
            raise ModelLoadError(f"version {at} is not in the registry{after}")
        item = _blob(info, store.weights(at))
        if not isinstance(item, Delta):
            start = _snapshot(info, item, config)
            break
        if item.config != config:
            raise ModelLoadError(f"version {at}: model shape {item.config} differs from the configured {config}")
        if not 0 < item.base < at:
            raise ModelLoadError(f"version {at}: a delta of version {item.base}, not of an earlier one")
        chain.append((info, item))
        at = item.base
    if not chain:
        return start
    try:
        return _apply(start, chain)
    except DeltaError as exc:
        origin = f" {SERVED_BASE}" if start is served else ""
        raise ModelLoadError(f"version {number}: {exc}{origin}") from exc


def _apply(start: Loaded, chain: list[tuple[VersionInfo, Delta]]) -> Loaded:
    """The chain's deltas (newest first) applied to ``start`` in order, the result checked against the
    newest's digest. Each delta names its base's digest; the names must link up."""
    params, touched = start.params, set[str]()
    claimed = None if start.digests is None else combine(start.params, start.digests)
    for info, delta in reversed(chain):
        if claimed is not None and delta.base_digest != claimed:
            raise DeltaError(f"version {info.version} is a delta of another model than version {delta.base}'s")
        if info.digest and info.digest != delta.digest:
            raise DeltaError(f"version {info.version}: the delta's digest differs from its metadata's")
        params, changed = apply_delta(params, delta, owned=touched)
        touched |= changed
        claimed = delta.digest
    info, last = chain[0]
    digests = check_digest(params, touched, start.digests, last.digests, last.digest)
    return Loaded(info, params, digests, len(chain))


def load_version(store: Store, number: int, config: ModelConfig) -> tuple[VersionInfo, Params]:
    loaded = resolve_version(store, number, config)
    return loaded.info, loaded.params


def initial_params(settings: Settings) -> Params:
    """Θ_0: the configured pre-trained checkpoint, else a seeded random init."""
    config = settings.model()
    if settings.initial_model is None:
        return seeded_model(config, settings.seed).params()
    try:
        stored, params, _ = load_checkpoint(settings.initial_model.read_bytes())
    except (OSError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"ASMG_INITIAL_MODEL {settings.initial_model}: cannot read checkpoint ({exc})") from exc
    if stored != config:
        raise ModelLoadError(f"ASMG_INITIAL_MODEL has model shape {stored}, the settings say {config}")
    return params


def ensure_initial_model(store: Store, settings: Settings) -> None:
    """Publish Θ_0 as version 1 unless the registry already has a version, so
    ``/v1/predict`` works before the first period closes."""
    if store.pointer().version is None:
        version = new_version(settings.model(), initial_params(settings), 0, "initial", note="initial model")
        if store.publish_initial(version):
            log.info("published the initial model as version 1")
