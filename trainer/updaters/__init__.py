"""Update methods by name, as ``asmg replay --methods`` and the service use them."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from trainer.config import ModelKind
from trainer.features import Examples
from trainer.learner import BaseLearner
from trainer.updaters.asmg import Asmg, MetaConfig
from trainer.updaters.base import Updater
from trainer.updaters.baselines import BaselineConfig, IncCtr, Spmf
from trainer.updaters.incremental import BatchUpdate
from trainer.updaters.sml import Sml

# The configuration each ASMG name runs by default: chosen on the validation
# periods (docs/results.md). The paper's exact form is
# ``readout="plain", lr=1e-2``, reachable through replace()/CLI options.
CHOSEN_META = MetaConfig(readout="residual", lr=1e-3, gate_bias=True)

METHODS: tuple[str, ...] = (
    "iu",
    "bu-3",
    "bu-5",
    "bu-7",
    "spmf",
    "incctr",
    "sml",
    "sml-mf",
    "asmg-linear",
    "asmg-gru-single",
    "asmg-gru-multi",
    "asmg-gru-full",
    "asmg-gru-zero",
    "asmg-gru-unif",
)


class UnknownMethod(ValueError):
    pass


def meta_config(method: str, overrides: dict[str, Any] | None = None) -> MetaConfig:
    """The meta configuration ``method`` runs with, after ``overrides``."""
    base = replace(CHOSEN_META, **(overrides or {}))
    if method == "asmg-linear":
        return replace(base, generator="linear", strategy="single")
    strategy = method.removeprefix("asmg-gru-")
    return replace(base, generator="gru", strategy=strategy)  # type: ignore[arg-type]


def base_model_kind(method: str) -> ModelKind:
    """The base model a method updates: SML-MF's is matrix factorisation."""
    return "mf" if method == "sml-mf" else "emb-mlp"


def make_updater(
    method: str,
    learner: BaseLearner,
    seed: int,
    meta_overrides: dict[str, Any] | None = None,
    baselines: BaselineConfig | None = None,
    pretrain: Examples | None = None,
) -> Updater:
    """The updater ``method`` names. ``pretrain`` (Θ_0's training data) seeds SPMF's reservoir."""
    if method not in METHODS:
        raise UnknownMethod(f"unknown method {method!r}; known: {', '.join(METHODS)}")
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
