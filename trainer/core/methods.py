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


def base_model_kind(method: str) -> ModelKind:
    """The base model a method updates: SML-MF's is matrix factorisation."""
    return "mf" if method == "sml-mf" else "emb-mlp"
