"""Data-parallel fits of the base model: each minibatch split over processes (torch.distributed, gloo).

A fit over one period's examples (the IU step every updater takes, and
pre-training) runs on N processes of one process group. Rank 0 owns the
learner; at the start of each fit it sends the other ranks the learner's
whole state (weights, Adam's moments, the shuffling generator) and the
examples, so every rank starts from the same point. Then, for each minibatch
(drawn from the shared generator, so the same on every rank), rank r takes
the r-th contiguous share of its rows, computes the gradient of its share's
mean loss scaled by the share's fraction of the batch, and the ranks sum
those gradients (all-reduce): the sum is the gradient of the whole batch's
mean loss, the single process's gradient up to float rounding. Every rank
then takes the same Adam step, so the weights stay identical on every rank;
each fit ends by checking that they do. The result is a single-process fit
with the same batch size and example order, which ``tests/test_distributed.py``
checks against one.

The gradients are dense (the model's lookups backpropagate with
``index_add_`` into full tables, and Adam steps every row). Only the
embedding rows the whole batch looks up can be non-zero, and every rank knows
the whole batch, so the ranks sum those rows alone (plus the MLP's tensors):
for batches of 128 that is a few thousand of the 65,536 rows per table. The
rows left out are exactly zero on every rank, so this equals a dense
all-reduce bit for bit.

The meta generator, evaluation and publishing stay on rank 0; the other ranks
only serve fits (:func:`serve`). Two ways to form the group:

* ``torchrun --nproc-per-node N`` (``asmg replay --base-procs N`` relaunches
  itself so): :func:`join_torchrun` on every rank;
* the trainer's own helpers: :func:`spawn` starts N − 1 processes on a
  loopback TCP store and returns rank 0's handle.

The process's group is installed with :func:`installed`; while one is,
``BaseLearner.fit`` runs on it. With N = 1 nothing is installed and the fit is
the single-process one, unchanged.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from trainer.core.config import ModelConfig, TrainConfig
from trainer.core.features import Examples
from trainer.core.model import EMBEDDING_TABLES, Params

if TYPE_CHECKING:
    from trainer.learning.learner import BaseLearner

log = logging.getLogger("asmg.distributed")

# Helpers wait for rank 0's next fit for as long as a period lasts (a day in
# the service), so collectives must not time out while idle; a helper whose
# parent is gone exits by itself (see _watch_parent).
IDLE_TIMEOUT = timedelta(days=365)
START_TIMEOUT = timedelta(seconds=120)


class DivergedRanks(RuntimeError):
    """The ranks' weights differ after a fit: data parallelism has lost its invariant."""


# -- the fit every rank runs ------------------------------------------------------


def batch_rows(ex: Examples, idx: Tensor, sizes: dict[str, int]) -> dict[str, Tensor]:
    """Per embedding table of ``sizes`` (name → rows), the rows examples ``idx`` look up,
    ascending; padding (-1) counts as row 0, which a candidate's clamp looks up."""
    rows = {}
    for name, size in sizes.items():
        used = torch.zeros(size, dtype=torch.bool)
        for field in EMBEDDING_TABLES[name]:
            index = getattr(ex, field).index_select(0, idx)
            used.index_fill_(0, index.reshape(-1).clamp(min=0).long(), True)
        rows[name] = used.nonzero().squeeze(1)
    return rows


def _step(
    learner: BaseLearner,
    ex: Examples,
    idx: Tensor,
    soft_targets: Tensor | None,
    soft_weight: float,
    group: Any,
    rank: int,
    size: int,
) -> float:
    """One minibatch ``idx``: this rank's share's gradient, summed over the ranks, one Adam step.
    Returns the whole batch's mean loss."""
    model, optimizer = learner.model, learner.optimizer
    named = list(model.named_parameters())
    shard = idx.tensor_split(size)[rank]
    optimizer.zero_grad(set_to_none=True)
    loss_value = torch.zeros(1)
    if len(shard):
        batch = ex.select(shard)
        out = model(batch)
        loss = F.binary_cross_entropy_with_logits(out, batch.label)
        if soft_targets is not None:
            soft = F.binary_cross_entropy_with_logits(out, soft_targets[shard])
            loss = (1 - soft_weight) * loss + soft_weight * soft
        share = len(shard) / len(idx)  # the share's mean loss weighs as many rows as it has
        (loss * share).backward()
        loss_value = loss.detach().reshape(1) * share
    tables = {name: p.shape[0] for name, p in named if name in EMBEDDING_TABLES}
    rows = batch_rows(ex, idx, tables)
    parts = []
    for name, p in named:
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        p.grad = grad
        parts.append((grad.index_select(0, rows[name]) if name in rows else grad).reshape(-1))
    flat = torch.cat([*parts, loss_value])
    dist.all_reduce(flat, group=group)
    offset = 0
    for name, p in named:
        assert p.grad is not None
        if name in rows:
            n = len(rows[name]) * p.shape[1]
            p.grad.zero_().index_copy_(0, rows[name], flat[offset : offset + n].view(-1, p.shape[1]))
        else:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p))
        offset += n
    optimizer.step()
    return float(flat[-1])


def fingerprint(params: Params) -> Tensor:
    """Per tensor its sum and its sum of squares, in float64: ranks whose steps drifted apart
    differ there (a check on every fit, so cheaper than comparing the weights)."""
    out = []
    for value in params.values():
        flat = value.detach().reshape(-1).double()
        out += [flat.sum(), flat.dot(flat)]
    return torch.stack(out)


def fit_shard(
    learner: BaseLearner,
    ex: Examples,
    epochs: int,
    soft_targets: Tensor | None,
    soft_weight: float,
    group: Any = None,
) -> float:
    """``learner.fit`` as rank ``rank`` of ``group`` runs it (every rank calls this with the
    same state and examples); returns the mean batch loss. Raises :class:`DivergedRanks`
    if the ranks' weights differ at the end."""
    from trainer.learning.learner import minibatches

    rank, size = dist.get_rank(group), dist.get_world_size(group)
    learner.model.train()
    losses = []
    for _ in range(epochs):
        for idx in minibatches(len(ex), learner.train_config.batch_size, learner.rng):
            losses.append(_step(learner, ex, idx, soft_targets, soft_weight, group, rank, size))
    mine = fingerprint(learner.model.params())
    every = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(every, mine, group=group)
    if not all(torch.equal(mine, other) for other in every):
        raise DivergedRanks("the ranks' base-model weights differ after a data-parallel fit")
    return sum(losses) / len(losses) if losses else float("nan")


# -- rank 0's handle and the other ranks' loop ------------------------------------------------


def _send(message: tuple[str, Any], group: Any) -> None:
    dist.broadcast_object_list([message], src=0, group=group)


def _receive(group: Any) -> tuple[str, Any]:
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0, group=group)
    command, payload = box[0]
    return str(command), payload


class FitGroup:
    """Rank 0's handle on a data-parallel group: :meth:`fit` runs a learner's fit on every rank."""

    def __init__(self, group: Any = None, processes: list[Any] | None = None, owns_group: bool = False) -> None:
        self.group = group
        self.size = dist.get_world_size(group)
        self.processes = processes or []  # helpers this process started (spawn), joined on close
        self.owns_group = owns_group
        self.broken = False  # a fit failed part-way: the ranks may be out of step; start a new group
        self.closed = False

    def __deepcopy__(self, memo: dict[int, Any]) -> FitGroup:
        return self  # a handle on processes, shared by whatever copies a learner

    def fit(
        self,
        learner: BaseLearner,
        ex: Examples,
        epochs: int,
        soft_targets: Tensor | None = None,
        soft_weight: float = 0.0,
    ) -> float:
        if self.broken or self.closed:
            raise RuntimeError("the data-parallel group is broken or closed")
        try:
            request = {
                "model": learner.config,
                "train": learner.train_config,
                "state": learner.state_dict(),
                "examples": ex.to_dict(),
                "epochs": epochs,
                "soft_targets": soft_targets,
                "soft_weight": soft_weight,
            }
            _send(("fit", request), self.group)
            return fit_shard(learner, ex, epochs, soft_targets, soft_weight, self.group)
        except BaseException:
            self.broken = True
            raise

    def rank_params(self) -> list[Params]:
        """Every rank's base-model weights after the last fit, in rank order (rank 0's is
        ``None``'s place: the caller holds its learner)."""
        _send(("params", None), self.group)
        gathered: list[Any] = [None] * self.size
        dist.gather_object(None, gathered, dst=0, group=self.group)
        return gathered

    def close(self) -> None:
        """Stop the other ranks (and the processes this one started); idempotent."""
        if self.closed:
            return
        self.closed = True
        if not self.broken:
            try:
                _send(("stop", None), self.group)
            except Exception as exc:  # a helper already gone: nothing left to stop
                log.warning("could not stop the data-parallel helpers: %s", exc)
                self.broken = True
        for process in self.processes:
            process.join(timeout=10 if not self.broken else 0)
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def serve(group: Any = None) -> None:
    """A helper rank: run rank 0's fits on its share of each batch until told to stop."""
    from trainer.learning.learner import BaseLearner

    learners: dict[ModelConfig, BaseLearner] = {}
    last: BaseLearner | None = None
    while True:
        command, request = _receive(group)
        if command == "stop":
            return
        if command == "params":
            dist.gather_object(last.params() if last is not None else None, None, dst=0, group=group)
            continue
        if command != "fit":
            raise RuntimeError(f"unknown data-parallel command {command!r}")
        config: ModelConfig = request["model"]
        train: TrainConfig = request["train"]
        if config not in learners:
            learners[config] = BaseLearner(config, train, 0)
        last = learners[config]
        last.train_config = train
        last.load_state_dict(request["state"])
        examples = Examples.from_dict(request["examples"])
        fit_shard(last, examples, request["epochs"], request["soft_targets"], request["soft_weight"], group)


# -- forming a group --------------------------------------------------------------


def torchrun_world() -> int:
    """The world size torchrun launched this process into; 1 outside torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join_torchrun() -> FitGroup | None:
    """Join the gloo group torchrun set up (``RANK``, ``WORLD_SIZE``, ``MASTER_*``). Rank 0
    gets its handle; another rank serves fits until rank 0 closes the group, then gets None."""
    dist.init_process_group("gloo", timeout=IDLE_TIMEOUT)
    if dist.get_rank() == 0:
        return FitGroup(owns_group=True)
    try:
        serve()
    finally:
        dist.destroy_process_group()
    return None


def _watch_parent(parent: int) -> None:
    """Exit this helper once the process that started it is gone (it would wait forever)."""
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(1.0)


def _helper_main(rank: int, size: int, port: int, threads: int, parent: int) -> None:
    torch.set_num_threads(threads)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    store = dist.TCPStore("127.0.0.1", port, size, is_master=False, timeout=START_TIMEOUT)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=size, timeout=IDLE_TIMEOUT)
    try:
        serve()
    finally:
        dist.destroy_process_group()


def spawn(size: int, threads: int = 1) -> FitGroup:
    """Start ``size − 1`` helper processes and a gloo group with them on loopback; this
    process is rank 0. One group per process (it is torch.distributed's default group)."""
    if size < 2:
        raise ValueError("a data-parallel group needs at least 2 processes")
    if dist.is_initialized():
        raise RuntimeError("this process is already in a torch.distributed group")
    # port 0: the store picks a free port, which the helpers are told
    store = dist.TCPStore("127.0.0.1", 0, size, is_master=True, wait_for_workers=False, timeout=START_TIMEOUT)
    context = torch.multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_helper_main, args=(rank, size, store.port, threads, os.getpid()), daemon=True)
        for rank in range(1, size)
    ]
    for process in processes:
        process.start()
    try:
        dist.init_process_group("gloo", store=store, rank=0, world_size=size, timeout=IDLE_TIMEOUT)
    except BaseException:
        for process in processes:
            process.terminate()
        raise
    group = FitGroup(processes=processes, owns_group=True)
    atexit.register(group.close)  # a process that never closes it still stops its helpers first
    return group


# -- the process's group ----------------------------------------------------------------

_active: FitGroup | None = None


def active() -> FitGroup | None:
    """The group this process's base-model fits run on, if one is installed."""
    return _active


@contextmanager
def installed(group: FitGroup) -> Iterator[FitGroup]:
    """Run this process's base-model fits on ``group`` within the block; close it after."""
    global _active
    if _active is not None:
        raise RuntimeError("a data-parallel group is already installed in this process")
    _active = group
    try:
        yield group
    finally:
        _active = None
        group.close()


def install(group: FitGroup | None) -> None:
    """Set (or, with None, clear) the process's group outside a block: the trainer's, for its lifetime."""
    global _active
    _active = group
