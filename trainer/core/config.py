"""Shapes and training settings of the base model, as plain dataclasses.

A checkpoint stores ``asdict(ModelConfig)`` beside the weights so that a model
is rebuilt from the file alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ModelKind = Literal["emb-mlp", "mf"]


@dataclass(frozen=True)
class ModelConfig:
    """Embedding & MLP sizes (docs/method.md §5 defaults)."""

    embedding_dim: int = 8
    user_buckets: int = 1 << 16
    item_buckets: int = 1 << 16
    category_buckets: int = 1 << 10
    history_length: int = 30
    hidden: tuple[int, ...] = (20, 10)
    # "mf": matrix factorisation (SML-MF's base model): user · item + per-id biases, no MLP
    kind: ModelKind = "emb-mlp"

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "user_buckets", "item_buckets", "category_buckets"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if self.history_length < 0:
            raise ValueError("history_length must not be negative")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))

    @property
    def n_layers(self) -> int:
        """Linear layers of the MLP; 0 for matrix factorisation."""
        return 0 if self.kind == "mf" else len(self.hidden) + 1

    @property
    def mlp_input(self) -> int:
        # user id (m) + history item vector (2m) + candidate item vector (2m)
        return 5 * self.embedding_dim


@dataclass(frozen=True)
class TrainConfig:
    """How a base model is fitted to one period."""

    lr: float = 1e-3
    batch_size: int = 1024
    epochs: int = 1

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.batch_size < 1 or self.epochs < 1:
            raise ValueError("lr, batch_size and epochs must be positive")


@dataclass(frozen=True)
class SmlConfig:
    filters1: int = 3  # n1
    filters2: int = 2  # n2
    hidden: int = 8  # the first dense layer
    lr: float = 1e-4
    batch_size: int = 1024
    epochs: int = 1
    residual: bool = True

    def __post_init__(self) -> None:
        for name in ("filters1", "filters2", "hidden", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"SML {name} must be positive")
        if not self.lr > 0:
            raise ValueError("SML lr must be positive")


@dataclass(frozen=True)
class BaselineConfig:
    incctr_lambda: float = 0.1  # weight of the distillation loss (the authors: 0.1–0.2)
    spmf_fraction: float = 0.1  # reservoir size, as a fraction of the pre-training rows
    spmf_ratio: float = 0.25  # reservoir samples mixed in per positive of the new period
    sml: SmlConfig = field(default_factory=SmlConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.incctr_lambda <= 1.0:
            raise ValueError("incctr_lambda must be in [0, 1]")
        if not 0.0 < self.spmf_fraction <= 1.0:
            raise ValueError("spmf_fraction must be in (0, 1]")
        if self.spmf_ratio < 0.0:
            raise ValueError("spmf_ratio must not be negative")
