"""IU and BU-w: retrain the base model on the newest period(s) (docs/method.md §1)."""

from __future__ import annotations

from collections import deque
from typing import Any

from trainer.core.features import Examples, concat_examples
from trainer.core.model import Params
from trainer.learning.learner import BaseLearner
from trainer.learning.updaters.base import Updater


class BatchUpdate(Updater):
    """BU-w: warm-start from the current model, train on the last ``window``
    periods together. ``window=1`` is IU."""

    def __init__(self, learner: BaseLearner, window: int = 1) -> None:
        super().__init__(learner)
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self.recent: deque[Examples] = deque(maxlen=window)

    def update(self, period: Examples) -> Params:
        self.recent.append(period)
        data = period if self.window == 1 else concat_examples(list(self.recent))
        self.learner.fit(data)
        return self.learner.params()

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "recent": [p.to_dict() for p in self.recent]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.recent = deque((Examples.from_dict(p) for p in state["recent"]), maxlen=self.window)
