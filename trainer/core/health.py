"""Is the trainer making progress? Judged from its status record, by any process that reads the store.

The active trainer writes its record (:class:`trainer.loop.worker.PeriodTrainer`)
at every phase of a period and, while idle, at least every
``HEARTBEAT_SECONDS``; each write carries the time as ``heartbeat``. A failed
round is recorded without moving the heartbeat. So a trainer that is dead,
hung, cut off from the store or failing round after round shows the same
symptom: a heartbeat older than ``ASMG_TRAINER_STALL_SECONDS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PHASES = ("read", "evaluate", "gate", "update", "check", "publish")
TRAINER_STATES = ("idle", "training", "retrying")
# what a trained period can publish: the method's model, IU's instead, or the served weights again
PUBLISHED = ("generated", "iu", "held")
HEARTBEAT_SECONDS = 10.0


@dataclass(frozen=True)
class TrainerHealth:
    ok: bool
    reason: str  # why not ok; "" when ok
    heartbeat_age: float | None  # seconds since the trainer last showed progress; None if it never did


def trainer_health(status: dict[str, Any], now: float, stall_seconds: float) -> TrainerHealth:
    heartbeat = status.get("heartbeat")
    if heartbeat is None:
        return TrainerHealth(False, "no trainer has reported yet", None)
    age = max(0.0, now - float(heartbeat))
    if age <= stall_seconds:
        return TrainerHealth(True, "", age)
    reason = f"no progress for {age:.0f} s (more than ASMG_TRAINER_STALL_SECONDS = {stall_seconds:g})"
    failures = int(status.get("consecutive_failures") or 0)
    if failures:
        reason += f"; {failures} failed rounds in a row, the last: {status.get('last_error')}"
    return TrainerHealth(False, reason, age)
