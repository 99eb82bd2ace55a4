"""The one interface every update method implements.

``update(D_t)`` consumes the data of the period that just closed and returns
the parameters to serve during the next period. Evaluating that return value
on ``D_{t+1}`` before calling ``update(D_{t+1})`` is the paper's
test-then-train protocol.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from trainer.core.features import Examples
from trainer.core.model import Params, score
from trainer.learning.learner import BaseLearner


class Updater(ABC):
    def __init__(self, learner: BaseLearner) -> None:
        self.learner = learner
        self.last_meta_seconds = 0.0  # time the last update spent on a meta model (ASMG, SML)

    @abstractmethod
    def update(self, period: Examples) -> Params:
        """Learn from the closed period; return the model for the next one."""

    def score(self, served: Params, period: Examples) -> tuple[float, float]:
        """AUC and LogLoss on ``period`` of what serving ``served`` (what ``update``
        returned) predicts: the model itself, unless a method serves more than one."""
        return score(served, period, self.learner.model.n_layers)

    def state_dict(self) -> dict[str, Any]:
        """Everything the next ``update`` needs, so a restart resumes exactly."""
        return {"learner": self.learner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])
