"""The update methods' names, which settings validate and every part of the trainer shares.

Only names live here: the methods themselves are in :mod:`trainer.learning.updaters`,
which the API never loads.
"""

from __future__ import annotations

from trainer.core.config import ModelKind

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


# Policies over a method's output that replay scores as rows of their own
# (trainer/learning/updaters/gated.py): on an ASMG method, "+gate", the service's (the
# generated model only after it beat IU's on the newest period), and "+ens", the two models'
# logits averaged; on any method, "+prev", its newest model's logits averaged with those of
# the model it served the period before (the control for "+ens": a two-model ensemble
# without a generator).
GATED_SUFFIX = "+gate"
ENSEMBLE_SUFFIX = "+ens"
PREVIOUS_SUFFIX = "+prev"
REPLAY_METHODS: tuple[str, ...] = (*METHODS, "asmg-gru-multi" + GATED_SUFFIX)


def policy_of(name: str) -> tuple[str, str]:
    """``(method, policy suffix)`` of a replay name; the suffix is "" for none."""
    for suffix in (GATED_SUFFIX, ENSEMBLE_SUFFIX, PREVIOUS_SUFFIX):
        if name.endswith(suffix):
            return name.removesuffix(suffix), suffix
    return name, ""


def is_replay_method(name: str) -> bool:
    """A method replay knows: one of :data:`METHODS`, an ASMG one under a policy
    suffix, or any one under ``+prev``."""
    method, suffix = policy_of(name)
    return method in METHODS and (suffix in ("", PREVIOUS_SUFFIX) or method.startswith("asmg-"))


def base_model_kind(method: str) -> ModelKind:
    """The base model a method updates: SML-MF's is matrix factorisation."""
    return "mf" if method == "sml-mf" else "emb-mlp"
