"""Policies over an ASMG method's generated model and IU's, as update methods of their own.

``+gate``: the service's publication policy.

The service publishes an ASMG method's generated model only when, on the
period that just closed, the model the generator made for it beat the model
IU would have served, both scored before either trained on it (the quality
gate); otherwise it publishes IU's new model. Replaying that policy shows
what a user of the service gets, beside the always-generated method and IU.
The held-back check the service adds (a blow-up guard) is not replayed.

``+ens``: an ensemble that averages the logits of the generated model and
IU's, a serving-time alternative: two models to hold and run per request.

``+prev``: any method's newest model averaged in logits with the one it
served the period before, the control for ``+ens``: what two models buy
without a generator.
"""

from __future__ import annotations

from typing import Any

from trainer.core.features import Examples
from trainer.core.model import Params, score
from trainer.learning.updaters.asmg import Asmg
from trainer.learning.updaters.base import Updater


class Policy(Updater):
    """A policy over another method: it trains as that method does and keeps its state;
    only what it serves, or how that is scored, differs."""

    def __init__(self, inner: Updater) -> None:
        super().__init__(inner.learner)
        self.inner = inner

    def update(self, period: Examples) -> Params:
        served = self.inner.update(period)
        self.last_meta_seconds = self.inner.last_meta_seconds
        return served

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


class Gated(Policy):
    def __init__(self, asmg: Asmg) -> None:
        super().__init__(asmg)
        self.asmg = asmg
        self.served_generated = 0  # periods the generated model went out

    def update(self, period: Examples) -> Params:
        scores = self.asmg.gate_scores(period)
        generated = super().update(period)
        # no evidence yet (warming up, or the first generated model) publishes IU, as the service does
        if scores is None or scores.generated < scores.iu:
            return self.learner.params()
        self.served_generated += 1
        return generated

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "served_generated": self.served_generated}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.served_generated = int(state.get("served_generated", 0))


class Ensembled(Policy):
    def __init__(self, asmg: Asmg) -> None:
        super().__init__(asmg)
        self.asmg = asmg

    def score(self, served: Params, period: Examples) -> tuple[float, float]:
        # in warm-up ``served`` is IU's model itself: nothing to average with
        partners = [self.learner.params()] if self.asmg.generating else []
        return score(served, period, self.learner.model.n_layers, partners)


class WithPrevious(Policy):
    def __init__(self, inner: Updater) -> None:
        super().__init__(inner)
        self.previous: Params | None = None  # what the last update served, copied: IU's weights change in place
        self.newest: Params | None = None

    def update(self, period: Examples) -> Params:
        self.previous = self.newest
        served = super().update(period)
        self.newest = {name: value.detach().clone() for name, value in served.items()}
        return served

    def score(self, served: Params, period: Examples) -> tuple[float, float]:
        partners = [] if self.previous is None else [self.previous]
        return score(served, period, self.learner.model.n_layers, partners)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "previous_served": self.previous, "newest_served": self.newest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.previous, self.newest = state.get("previous_served"), state.get("newest_served")
