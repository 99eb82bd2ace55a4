"""Concurrent predict requests share one forward pass and each gets its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import torch

from app.batching import MicroBatcher, NoModelError
from app.encoding import Encoded, RequestEncoder
from app.schemas import Candidate, PredictRequest
from app.serving import ModelHolder, ServedModel
from trainer.core.config import ModelConfig
from trainer.core.model import EmbMLP
from trainer.core.store.base import Click, VersionInfo

CONFIG = ModelConfig(user_buckets=256, item_buckets=256, category_buckets=16, history_length=5, hidden=(8, 4))


def served(seed: int, version: int) -> ServedModel:
    torch.manual_seed(seed)
    return ServedModel(VersionInfo(version, "0" * 64, version - 1, "iu", 0.0, 0), CONFIG, EmbMLP(CONFIG).params())


def request(user: str, n_items: int, clicks: int) -> Encoded:
    encoder = RequestEncoder(CONFIG)
    # a request with two categories on every other item, as wide as the other requests or wider
    keys = [Candidate(f"{user}-i{k}", tuple(f"c{c}" for c in range(k % 3))) for k in range(n_items)]
    row, candidates = encoder.candidates(PredictRequest(user, keys, None))
    history = encoder.logged_history([Click(f"h{k}", ("c1",)) for k in range(clicks)])
    return Encoded(row, *candidates, *history)


class CountingModel(ServedModel):
    """The real model, counting its forward passes and their sizes."""

    def score(self, requests):  # type: ignore[no-untyped-def]
        self.batches.append(len(requests))  # type: ignore[attr-defined]
        return super().score(requests)


def counting(seed: int, version: int) -> CountingModel:
    base = served(seed, version)
    model = CountingModel(base.info, base.config, base.params)
    object.__setattr__(model, "batches", [])
    return model


async def score_all(batcher: MicroBatcher, requests: list[Encoded]) -> list[tuple[list[float], ServedModel]]:
    return list(await asyncio.gather(*(batcher.score(r) for r in requests)))


def test_requests_that_arrive_together_share_one_forward_and_keep_their_own_scores() -> None:
    holder = ModelHolder()
    model = counting(0, 3)
    holder.swap(model)
    requests = [request(f"u{k}", n_items=k + 1, clicks=k) for k in range(6)]
    together = asyncio.run(score_all(MicroBatcher(holder, max_items=10_000), requests))
    assert model.batches == [6]  # type: ignore[attr-defined]
    alone = [model.score([r])[0] for r in requests]
    for (scores, version), expected in zip(together, alone, strict=True):
        assert version is model
        torch.testing.assert_close(torch.tensor(scores), torch.tensor(expected))
    assert [len(s) for s, _ in together] == [k + 1 for k in range(6)]


def test_a_full_batch_is_scored_without_waiting_for_the_rest() -> None:
    holder = ModelHolder()
    model = counting(0, 1)
    holder.swap(model)
    requests = [request(f"u{k}", n_items=4, clicks=1) for k in range(5)]
    asyncio.run(score_all(MicroBatcher(holder, max_items=8), requests))
    assert model.batches == [2, 2, 1]  # type: ignore[attr-defined]


def batches_of_two_requests(pause: Callable[[], Awaitable[None]], **batcher: Any) -> list[int]:
    """The forward passes' sizes when a second request follows the first after ``pause``."""
    holder = ModelHolder()
    model = counting(0, 1)
    holder.swap(model)

    async def staggered(batcher: MicroBatcher) -> None:
        first = asyncio.create_task(batcher.score(request("a", 2, 0)))
        await pause()
        second = asyncio.create_task(batcher.score(request("b", 2, 0)))
        await asyncio.gather(first, second)

    asyncio.run(staggered(MicroBatcher(holder, max_items=100, **batcher)))
    return model.batches  # type: ignore[attr-defined,no-any-return]


async def a_millisecond() -> None:
    await asyncio.sleep(0.001)


async def three_turns() -> None:
    for _ in range(3):  # first's task starts, then two more turns of the loop
        await asyncio.sleep(0)


def test_a_lone_request_waits_for_nothing_and_a_wait_gathers_stragglers() -> None:
    assert batches_of_two_requests(a_millisecond) == [1, 1]
    assert batches_of_two_requests(a_millisecond, max_wait=0.5) == [2]


def test_a_batch_stays_open_for_its_turns_of_the_loop() -> None:
    assert batches_of_two_requests(three_turns, turns=0) == [1, 1]
    assert batches_of_two_requests(three_turns, turns=4) == [2]


def test_one_batch_is_answered_by_one_version_even_across_a_swap() -> None:
    holder = ModelHolder()
    old, new = served(0, 1), served(1, 2)
    holder.swap(old)

    async def swap_midway(batcher: MicroBatcher) -> list[tuple[list[float], ServedModel]]:
        first = asyncio.create_task(batcher.score(request("a", 3, 1)))
        second = asyncio.create_task(batcher.score(request("b", 3, 1)))
        await asyncio.sleep(0)  # both queued, flush not yet run
        holder.swap(new)
        return [await first, await second]

    answers = asyncio.run(swap_midway(MicroBatcher(holder, max_items=100)))
    assert {id(model) for _, model in answers} == {id(new)}
    assert answers[0][0] == new.score([request("a", 3, 1)])[0]


def test_without_a_model_every_waiting_request_gets_the_error() -> None:
    batcher = MicroBatcher(ModelHolder(), max_items=100)

    async def both() -> list[BaseException | tuple[list[float], ServedModel]]:
        return list(
            await asyncio.gather(
                batcher.score(request("a", 1, 0)), batcher.score(request("b", 1, 0)), return_exceptions=True
            )
        )

    assert all(isinstance(answer, NoModelError) for answer in asyncio.run(both()))


def test_a_cancelled_request_does_not_break_its_batch() -> None:
    holder = ModelHolder()
    holder.swap(served(0, 1))
    batcher = MicroBatcher(holder, max_items=100)

    async def one_gives_up() -> tuple[list[float], ServedModel]:
        quitter = asyncio.create_task(batcher.score(request("a", 2, 0)))
        stayer = asyncio.create_task(batcher.score(request("b", 2, 0)))
        await asyncio.sleep(0)
        quitter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await quitter
        return await stayer

    scores, _ = asyncio.run(one_gives_up())
    assert len(scores) == 2
