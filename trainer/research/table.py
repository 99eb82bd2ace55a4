"""A whole replay table: every (method, seed) run, resumable and in parallel.

Each finished run is written to ``OUT/runs/{method}-seed{seed}.csv`` the
moment it ends (write, then rename), so an interrupted table resumes where
it stopped and a run is never done twice. With ``jobs`` > 1 the runs are
shared out one at a time among that many processes, so the cores stay busy
to the end; each Θ_0 is pre-trained once and kept under ``OUT/pretrained``
for the others (and for a resumed table). The settings of a table are
fixed in ``OUT/table.json``: resuming with other settings is refused rather
than mixing results.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainer.core.config import BaselineConfig, ModelConfig, TrainConfig
from trainer.research.events import DataError, EventTable
from trainer.research.replay import PeriodResult, Protocol, Replay, period_bounds
from trainer.research.report import read_periods_csv, write_periods_csv


@dataclass(frozen=True)
class TableSpec:
    source: str  # "dataset", "data" or "synthetic"
    name: str  # data set name or directory
    methods: tuple[str, ...]
    seeds: int
    model: ModelConfig
    train: TrainConfig
    protocol: Protocol
    meta_overrides: dict[str, Any]
    baselines: BaselineConfig
    threads: int | None

    def settings(self) -> dict[str, Any]:
        """What results depend on (not which methods or how many seeds)."""
        return json.loads(
            json.dumps(
                {
                    "source": self.source,
                    "name": self.name,
                    "model": asdict(self.model),
                    "train": asdict(self.train),
                    "protocol": asdict(self.protocol),
                    "meta_overrides": self.meta_overrides,
                    "baselines": asdict(self.baselines),
                },
                sort_keys=True,
            )
        )


def load_source(source: str, name: str) -> EventTable:
    """The events of a ``(source, name)`` pair: a known data set, a directory, or the synthetic stream."""
    from trainer.research import datasets
    from trainer.research.synthetic import synthetic_events

    if source == "synthetic":
        return synthetic_events()
    if source == "data":
        return datasets.load_directory(Path(name))
    return datasets.load_dataset(name)


def run_path(out: Path, method: str, seed: int) -> Path:
    return out / "runs" / f"{method}-seed{seed}.csv"


def check_settings(spec: TableSpec, out: Path) -> None:
    """Fix the table's settings on first use; refuse to resume under others."""
    path = out / "table.json"
    if path.exists():
        stored = json.loads(path.read_text())
        if stored != spec.settings():
            changed = sorted(
                k for k in stored.keys() | spec.settings().keys() if stored.get(k) != spec.settings().get(k)
            )
            raise DataError(
                f"{out} holds runs made with other settings (differing: {', '.join(changed)}); "
                "use another --out or delete it"
            )
        return
    (out / "runs").mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec.settings(), indent=2, sort_keys=True) + "\n")


def open_replay(spec: TableSpec, out: Path) -> Replay:
    import torch

    from trainer.research.encoding import encode_log

    if spec.threads:
        torch.set_num_threads(spec.threads)
    log = encode_log(load_source(spec.source, spec.name), spec.model)
    return Replay(log, spec.model, spec.train, spec.protocol, pretrained_dir=out / "pretrained")


def run_one(
    replay: Replay,
    spec: TableSpec,
    out: Path,
    method: str,
    seed: int,
    on_period: Callable[[PeriodResult], None] | None = None,
) -> None:
    """One run, saved whole (written aside, then renamed into place)."""
    results = replay.run(method, seed, spec.meta_overrides, on_period=on_period, baselines=spec.baselines)
    path = run_path(out, method, seed)
    partial = path.with_suffix(".partial")
    write_periods_csv(results, partial)
    os.replace(partial, path)


# A pool process's own Replay, built once by its initializer: every run it
# is handed then shares the encoded log and the pre-trained models. Each
# period it scores is reported on the pool's queue, for the progress bar.
_process_replay: Replay | None = None
_process_progress: Any = None


def _start_process(spec: TableSpec, out: Path, progress: Any) -> None:
    global _process_replay, _process_progress
    _process_replay = open_replay(spec, out)
    _process_progress = progress


def _run_in_process(spec: TableSpec, out: Path, method: str, seed: int) -> None:
    assert _process_replay is not None, "the pool's initializer builds the replay"
    run_one(_process_replay, spec, out, method, seed, on_period=lambda _: _process_progress.put(1))


def run_table(spec: TableSpec, out: Path, jobs: int = 1) -> list[PeriodResult]:
    """Run what is missing of the table and return all of its results."""
    from tqdm import tqdm

    check_settings(spec, out)
    # method by method, so parallel processes start on different seeds and pre-train their Θ_0s side by side
    todo = [(m, s) for m in spec.methods for s in range(spec.seeds) if not run_path(out, m, s).exists()]
    updates = spec.protocol.periods - spec.protocol.pretrain_periods - 1
    if todo and (jobs <= 1 or len(todo) == 1):
        replay = open_replay(spec, out)
        with tqdm(total=len(todo) * updates, unit="period", file=sys.stderr) as bar:

            def advance(result: PeriodResult) -> None:
                bar.set_description(f"{result.method} seed {result.seed}")
                bar.update()

            for method, seed in todo:
                run_one(replay, spec, out, method, seed, on_period=advance)
    elif todo:
        # A pool's initializer error only breaks the pool; refuse bad data here, with its own message.
        period_bounds(len(load_source(spec.source, spec.name)), spec.protocol.periods)
        context = multiprocessing.get_context("spawn")  # a clean torch per process
        progress = context.Queue()
        with (
            ProcessPoolExecutor(
                max_workers=min(jobs, len(todo)),
                mp_context=context,
                initializer=_start_process,
                initargs=(spec, out, progress),
            ) as pool,
            tqdm(total=len(todo) * updates, unit="period", file=sys.stderr) as bar,
        ):
            futures = [pool.submit(_run_in_process, spec, out, m, s) for m, s in todo]
            while True:
                done, running = wait(futures, timeout=1.0)
                bar.update(_drain(progress))
                bar.set_description(f"{sum(run_path(out, m, s).exists() for m, s in todo)}/{len(todo)} runs")
                if not running:
                    break
            for future in done:
                future.result()  # re-raise a worker's error
    return [r for s in range(spec.seeds) for m in spec.methods for r in read_periods_csv(run_path(out, m, s))]


def _drain(progress: Any) -> int:
    """How many periods the pool reported since the last call."""
    count = 0
    while True:
        try:
            count += progress.get_nowait()
        except queue.Empty:
            return count
