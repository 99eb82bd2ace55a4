"""A whole replay table: every (method, seed) run, resumable and in parallel.

Each finished run is written to ``OUT/runs/{method}-seed{seed}.csv`` the
moment it ends (write, then rename), so an interrupted table resumes where
it stopped and a run is never done twice. Runs are grouped by seed, so a
process pre-trains each Θ_0 it needs once; ``jobs`` processes share the
groups. The settings of a table are fixed in ``OUT/table.json``: resuming
with other settings is refused rather than mixing results.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainer.config import ModelConfig, TrainConfig
from trainer.events import DataError, EventTable
from trainer.replay import PeriodResult, Protocol
from trainer.report import read_periods_csv, write_periods_csv
from trainer.updaters.baselines import BaselineConfig


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
    from trainer import datasets
    from trainer.synthetic import synthetic_events

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


def run_seeds(
    spec: TableSpec, out: Path, seeds: list[int], on_period: Callable[[PeriodResult], None] | None = None
) -> None:
    """Every missing run of ``seeds``, one Θ_0 per seed, each saved as it ends."""
    import torch

    from trainer.features import encode_log
    from trainer.replay import Replay

    if spec.threads:
        torch.set_num_threads(spec.threads)
    replay = Replay(encode_log(load_source(spec.source, spec.name), spec.model), spec.model, spec.train, spec.protocol)
    for seed in seeds:
        for method in spec.methods:
            path = run_path(out, method, seed)
            if path.exists():
                continue
            results = replay.run(method, seed, spec.meta_overrides, on_period=on_period, baselines=spec.baselines)
            partial = path.with_suffix(".partial")
            write_periods_csv(results, partial)
            os.replace(partial, path)


def run_table(spec: TableSpec, out: Path, jobs: int = 1) -> list[PeriodResult]:
    """Run what is missing of the table and return all of its results."""
    from tqdm import tqdm

    check_settings(spec, out)
    todo = [(m, s) for s in range(spec.seeds) for m in spec.methods if not run_path(out, m, s).exists()]
    seeds = sorted({s for _, s in todo})
    updates = spec.protocol.periods - spec.protocol.pretrain_periods - 1
    if todo and (jobs <= 1 or len(seeds) == 1):
        with tqdm(total=len(todo) * updates, unit="period", file=sys.stderr) as bar:

            def advance(result: PeriodResult) -> None:
                bar.set_description(f"{result.method} seed {result.seed}")
                bar.update()

            run_seeds(spec, out, seeds, on_period=advance)
    elif todo:
        context = multiprocessing.get_context("spawn")  # a clean torch per process
        with (
            ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool,
            tqdm(total=len(todo), unit="run", file=sys.stderr) as bar,
        ):
            futures = [pool.submit(run_seeds, spec, out, [seed]) for seed in seeds]
            while True:
                done, running = wait(futures, timeout=1.0)
                bar.n = sum(run_path(out, m, s).exists() for m, s in todo)
                bar.refresh()
                if not running:
                    break
            for future in done:
                future.result()  # re-raise a worker's error
    return [r for s in range(spec.seeds) for m in spec.methods for r in read_periods_csv(run_path(out, m, s))]
