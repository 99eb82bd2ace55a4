"""Update methods by name, as ``asmg replay --methods`` and the service use them."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from trainer.core.config import BaselineConfig
from trainer.core.features import Examples
from trainer.core.methods import (
    GATED_SUFFIX,
    METHODS,
    PREVIOUS_SUFFIX,
    base_model_kind,
    is_replay_method,
    policy_of,
)
from trainer.learning.learner import BaseLearner
from trainer.learning.updaters.asmg import Asmg, MetaConfig
from trainer.learning.updaters.base import Updater
from trainer.learning.updaters.baselines import IncCtr, Spmf
from trainer.learning.updaters.gated import Ensembled, Gated, WithPrevious
from trainer.learning.updaters.incremental import BatchUpdate
from trainer.learning.updaters.sml import Sml

# The configuration each ASMG-GRU name runs by default: chosen on the validation
# periods (docs/results.md). The paper's exact form is
# ``readout="plain", lr=1e-2, gate_bias=False, blend=1.0``, reachable through
# replace()/CLI options. ASMG-Linear serves its combination whole (blend 1):
# the blend was chosen for the GRU.
CHOSEN_META = MetaConfig(readout="residual", lr=1e-3, gate_bias=True, blend=0.5)


class UnknownMethod(ValueError):
    pass


def meta_config(method: str, overrides: dict[str, Any] | None = None) -> MetaConfig:
    """The meta configuration ``method`` runs with, after ``overrides``."""
    overrides = overrides or {}
    base = replace(CHOSEN_META, **overrides)
    method = policy_of(method)[0]
    if method == "asmg-linear":
        return replace(base, generator="linear", strategy="single", blend=overrides.get("blend", 1.0))
    strategy = method.removeprefix("asmg-gru-")
    return replace(base, generator="gru", strategy=strategy)  # type: ignore[arg-type]


def make_updater(
    method: str,
    learner: BaseLearner,
    seed: int,
    meta_overrides: dict[str, Any] | None = None,
    baselines: BaselineConfig | None = None,
    pretrain: Examples | None = None,
) -> Updater:
    """The updater ``method`` names. ``pretrain`` (Θ_0's training data) seeds SPMF's reservoir."""
    if not is_replay_method(method):
        raise UnknownMethod(
            f"unknown method {method!r}; known: {', '.join(METHODS)} (asmg-* names take +gate or +ens, any takes +prev)"
        )
    inner, policy = policy_of(method)
    if policy == PREVIOUS_SUFFIX:
        return WithPrevious(make_updater(inner, learner, seed, meta_overrides, baselines, pretrain))
    if policy:
        asmg = Asmg(learner, meta_config(method, meta_overrides), seed)
        return Gated(asmg) if policy == GATED_SUFFIX else Ensembled(asmg)
    baselines = baselines or BaselineConfig()
    if method == "iu":
        return BatchUpdate(learner, window=1)
    if method.startswith("bu-"):
        return BatchUpdate(learner, window=int(method.removeprefix("bu-")))
    if method == "incctr":
        return IncCtr(learner, baselines.incctr_lambda)
    if method == "spmf":
        return Spmf(learner, baselines, seed, pretrain)
    if method in ("sml", "sml-mf"):
        if learner.config.kind != base_model_kind(method):
            raise ValueError(f"{method} needs a {base_model_kind(method)} base model, not {learner.config.kind}")
        return Sml(learner, baselines.sml, seed)
    return Asmg(learner, meta_config(method, meta_overrides), seed)
