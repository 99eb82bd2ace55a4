"""The version registry's rules: what may be published and what may be served.

A version is published only with finite weights and its sha256, and is served
only when its blob matches that checksum, unpickles, fits the configured model
shape and holds finite weights. The API and the trainer both go through here.
"""

from __future__ import annotations

import hashlib
import logging
import math

import torch

from trainer.core.config import ModelConfig
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


def new_version(
    config: ModelConfig,
    params: Params,
    trained_through: int,
    method: str,
    metrics: dict[str, float] | None = None,
    note: str = "",
) -> NewVersion:
    if not all_finite(params):
        raise NonFiniteWeights(f"refusing to publish weights with NaN or infinity (trained through {trained_through})")
    blob = checkpoint_bytes(config, params, {"trained_through": trained_through, "method": method})
    finite = {k: float(v) for k, v in (metrics or {}).items() if math.isfinite(v)}
    return NewVersion(blob, hashlib.sha256(blob).hexdigest(), trained_through, method, finite, note)


def verified_params(info: VersionInfo, blob: bytes | None, config: ModelConfig) -> Params:
    """The weights of ``info``, only if the blob is whole and fits ``config``."""
    if blob is None:
        raise ModelLoadError(f"version {info.version}: weights are missing")
    if hashlib.sha256(blob).hexdigest() != info.sha256:
        raise ModelLoadError(f"version {info.version}: sha256 of the weights does not match its metadata")
    try:
        stored, params, _ = load_checkpoint(blob)
    except Exception as exc:  # a blob that passed the checksum but does not unpickle
        raise ModelLoadError(f"version {info.version}: unreadable checkpoint ({exc})") from exc
    if stored != config:
        raise ModelLoadError(f"version {info.version}: model shape {stored} differs from the configured {config}")
    if not all_finite(params):
        raise NonFiniteWeights(f"version {info.version}: the weights hold NaN or infinity")
    return params


def load_version(store: Store, number: int, config: ModelConfig) -> tuple[VersionInfo, Params]:
    info = store.version(number)
    if info is None:
        raise ModelLoadError(f"version {number} is not in the registry")
    return info, verified_params(info, store.weights(number), config)


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
