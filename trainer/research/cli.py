"""The ``asmg`` command line."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.core.config import BaselineConfig, ModelConfig, SmlConfig, TrainConfig
from trainer.research.events import DataError, EventTable

if TYPE_CHECKING:
    from trainer.research.replay import PeriodResult

log = logging.getLogger("asmg")


# what the research commands need beyond the service (the `research` extra)
RESEARCH_PACKAGES = ("pandas", "matplotlib", "tqdm")


def require_research_extra() -> None:
    """Import what the research commands need, so that a missing extra stops one before any work."""
    for name in RESEARCH_PACKAGES:
        importlib.import_module(name)


def _methods(value: str) -> list[str]:
    from trainer.core.methods import REPLAY_METHODS, is_replay_method

    if value.strip() == "all":
        return list(REPLAY_METHODS)
    names = [m.strip() for m in value.split(",") if m.strip()]
    unknown = [m for m in names if not is_replay_method(m)]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(REPLAY_METHODS)}"
            " (any asmg-* name takes +gate or +ens, any name +prev)"
        )
    return names


def positive_int(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return n


def json_object(value: str) -> dict[str, Any]:
    """A command-line JSON object of settings."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return parsed


def positive_float(value: str) -> float:
    x = float(value)
    if not 0 < x < math.inf:  # also refuses nan and inf
        raise argparse.ArgumentTypeError("must be a positive number")
    return x


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """Where the events come from: ``--dataset``, ``--data`` or ``--synthetic`` (see :func:`load_events`)."""
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="a known data set: ml-latest-small, ml-100k, ml-1m")
    source.add_argument("--data", type=Path, help="a directory laid out like ml-latest-small (ratings.csv, movies.csv)")
    source.add_argument("--synthetic", action="store_true", help="the seeded drifting synthetic stream")


def add_base_procs_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--base-procs",
        type=positive_int,
        help="processes every base-model fit (pre-training, each update's IU step) runs on, data parallel "
        "(torch.distributed, gloo): N > 1 relaunches the command under torchrun --nproc-per-node N, one torch "
        "thread per process, the runs one after another (default: torchrun's WORLD_SIZE under torchrun, else 1)",
    )


def run_data_parallel(args: argparse.Namespace, body: Callable[[], int]) -> int:
    """``body()`` with this process's base-model fits on ``--base-procs`` processes.

    One process: ``body()`` as it is. Several, outside torchrun: the same command
    again under ``torchrun --standalone --nproc-per-node N``, whose exit status
    this returns. Under torchrun: rank 0 runs ``body()`` with the group installed;
    the other ranks serve its fits until it is done.
    """
    from trainer.learning import distributed

    world = distributed.torchrun_world()
    procs = args.base_procs or world
    if world > 1 and procs != world:
        raise ValueError(f"--base-procs {procs} under torchrun with {world} processes; they must agree")
    if procs == 1:
        return body()
    if world == 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
        return subprocess.run([*command, "-m", "trainer.research.cli", *args.argv]).returncode
    group = distributed.join_torchrun()
    if group is None:
        return 0  # a helper rank: rank 0 reports
    with distributed.installed(group):
        return body()


def add_replay_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="replay a data set period by period and compare update methods")
    add_source_arguments(p)
    p.add_argument(
        "--methods",
        type=_methods,
        default=_methods("iu,asmg-gru-multi"),
        help="comma list, or all (the paper's Table 1 and 2)",
    )
    p.add_argument("--seeds", type=positive_int, default=1, help="number of seeds (0..N-1)")
    p.add_argument(
        "--out", type=Path, default=Path("results/replay"), help="output directory; finished runs there are not redone"
    )
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=os.cpu_count() or 1,
        help="processes sharing the runs, 1 torch thread each (default: one per core, which measured faster "
        "than torch threads; 1: this process alone, torch's threads)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        help="torch threads (default: torch's choice; 1 when running replays side by side)",
    )
    base = p.add_argument_group("base model (every method)")
    add_base_procs_argument(base)
    base.add_argument("--lr", type=positive_float, default=TrainConfig.lr)
    base.add_argument("--batch-size", type=positive_int, default=TrainConfig.batch_size)
    base.add_argument("--epochs", type=positive_int, default=TrainConfig.epochs, help="epochs per period")
    base.add_argument("--pretrain-epochs", type=positive_int, default=10)
    base.add_argument("--embedding-dim", type=positive_int, default=ModelConfig.embedding_dim)
    base.add_argument(
        "--buckets", type=positive_int, default=ModelConfig.item_buckets, help="user and item hash buckets"
    )
    meta = p.add_argument_group("meta generator (asmg-* methods; defaults: the chosen configuration)")
    meta.add_argument("--window", type=positive_int, help="k, versions per window")
    meta.add_argument("--meta-hidden", type=positive_int, help="GRU hidden size d")
    meta.add_argument("--meta-lr", type=positive_float)
    meta.add_argument("--meta-batch", type=positive_int)
    meta.add_argument("--meta-epochs", type=positive_int)
    meta.add_argument("--readout", choices=("plain", "residual"), help="plain is the paper's form")
    meta.add_argument("--gate-bias", action=argparse.BooleanOptionalAction, help="biases in the GRU gates")
    meta.add_argument("--warmup", type=int, help="meta-training periods before generated models serve")
    meta.add_argument(
        "--meta-replay", type=int, help="earlier windows the generator also trains on each period (meta-replay)"
    )
    meta.add_argument(
        "--meta-replay-share", type=positive_float, help="share of an earlier window's targets replayed, (0, 1]"
    )
    meta.add_argument(
        "--meta-holdout",
        type=float,
        help="share of the newest target held back to stop meta epochs on, [0, 1) (with --meta-epochs as the most)",
    )
    meta.add_argument(
        "--meta-blend",
        type=positive_float,
        help="serve (1 - B)·IU's model + B·the generated one, (0, 2]; 1 (default) serves the generated model",
    )
    meta.add_argument(
        "--native-kernels",
        action=argparse.BooleanOptionalAction,
        help="the GRU in C, built with the machine's C compiler (default); --no-native-kernels runs it in torch",
    )
    others = p.add_argument_group("baselines")
    others.add_argument("--incctr-lambda", type=float, default=BaselineConfig.incctr_lambda, help="distillation weight")
    others.add_argument(
        "--spmf-fraction", type=float, default=BaselineConfig.spmf_fraction, help="reservoir / pre-training rows"
    )
    others.add_argument(
        "--spmf-ratio", type=float, default=BaselineConfig.spmf_ratio, help="replayed rows per new positive"
    )
    others.add_argument("--sml-filters", default="3,2", help="SML conv filters n1,n2")
    others.add_argument("--sml-hidden", type=positive_int, default=SmlConfig.hidden, help="SML dense hidden size")
    others.add_argument("--sml-lr", type=positive_float, default=SmlConfig.lr, help="SML transfer learning rate")
    others.add_argument(
        "--sml-readout", choices=("plain", "residual"), default="residual", help="plain is the paper's form"
    )
    p.set_defaults(handler=run_replay)


def sml_config(args: argparse.Namespace) -> SmlConfig:
    try:
        n1, n2 = (int(part) for part in args.sml_filters.split(","))
    except ValueError as exc:
        raise ValueError(f"--sml-filters takes two integers like 3,2, not {args.sml_filters!r}") from exc
    return SmlConfig(n1, n2, args.sml_hidden, args.sml_lr, residual=args.sml_readout == "residual")


def add_fetch_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch", help="download and cache a MovieLens data set (ml-100k, ml-1m)")
    p.add_argument("name")
    p.add_argument("--cache-dir", type=Path, help="default: $ASMG_DATA_DIR or ~/.cache/asmg/datasets")
    p.set_defaults(handler=run_fetch)


def meta_overrides(args: argparse.Namespace) -> dict[str, Any]:
    pairs = {
        "window": args.window,
        "hidden": args.meta_hidden,
        "lr": args.meta_lr,
        "batch_size": args.meta_batch,
        "epochs": args.meta_epochs,
        "readout": args.readout,
        "gate_bias": args.gate_bias,
        "warmup": args.warmup,
        "replay": args.meta_replay,
        "replay_share": args.meta_replay_share,
        "holdout": args.meta_holdout,
        "blend": args.meta_blend,
        "native_kernels": args.native_kernels,
    }
    return {k: v for k, v in pairs.items() if v is not None}


def source_of(args: argparse.Namespace) -> tuple[str, str]:
    """``(source, name)`` as :class:`trainer.research.table.TableSpec` takes them."""
    if args.synthetic:
        return "synthetic", "synthetic"
    if args.data is not None:
        return "data", str(args.data)
    return "dataset", args.dataset


def load_events(args: argparse.Namespace) -> tuple[str, EventTable]:
    from trainer.research.table import load_source

    source, name = source_of(args)
    return name, load_source(source, name)


def run_replay(args: argparse.Namespace) -> int:
    require_research_extra()
    return run_data_parallel(args, lambda: replay_table(args))


def replay_table(args: argparse.Namespace) -> int:
    import torch

    from trainer.learning import distributed
    from trainer.learning.updaters import meta_config
    from trainer.research.replay import Protocol
    from trainer.research.table import TableSpec, run_table

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = meta_overrides(args)
    baselines = BaselineConfig(args.incctr_lambda, args.spmf_fraction, args.spmf_ratio, sml_config(args))
    for method in args.methods:
        if method.startswith("asmg"):
            meta_config(method, overrides)  # reject bad meta settings before the slow part
    model_config = ModelConfig(embedding_dim=args.embedding_dim, user_buckets=args.buckets, item_buckets=args.buckets)
    train_config = TrainConfig(lr=args.lr, batch_size=args.batch_size, epochs=args.epochs)
    protocol = Protocol(pretrain_epochs=args.pretrain_epochs)
    source, name = source_of(args)
    # data parallel: this process shares each base fit with the others, so the runs go one at a time
    jobs = 1 if distributed.active() is not None else args.jobs
    spec = TableSpec(
        source,
        name,
        tuple(args.methods),
        args.seeds,
        model_config,
        train_config,
        protocol,
        overrides,
        baselines,
        args.threads or (1 if jobs > 1 or distributed.active() is not None else None),
    )
    started = time.perf_counter()
    results = run_table(spec, args.out, jobs)
    write_outputs(results, args.out, name)
    settings = {
        "data": name,
        "methods": args.methods,
        "seeds": args.seeds,
        "base_procs": args.base_procs or distributed.torchrun_world(),
        "model": asdict(model_config),
        "train": asdict(train_config),
        "baselines": asdict(baselines),
        "protocol": asdict(protocol),
        "meta": {m: asdict(meta_config(m, overrides)) for m in args.methods if m.startswith("asmg")},
        "seconds": time.perf_counter() - started,
    }
    (args.out / "config.json").write_text(json.dumps(settings, indent=2) + "\n")
    return 0


def write_outputs(
    results: list[PeriodResult], out: Path, name: str, markdown: bool = False, paper: bool = False
) -> None:
    """Summaries, per-period CSV and plot into ``out``; the tables to stdout."""
    from trainer.research.report import (
        format_markdown,
        format_table,
        meta_seconds_at_last_period,
        plot_auc,
        summarise,
        write_periods_csv,
        write_summary,
    )

    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(results, "test")
    write_periods_csv(results, out / "periods.csv")
    write_summary(summary, out / "summary.json")
    write_summary(summarise(results, "valid"), out / "summary_valid.json")
    plot_auc(results, out / "auc.png", f"{name}: per-period AUC")
    seeds = len({r.seed for r in results})
    tests = len({r.period for r in results if r.split == "test"})
    print(f"{name}: mean over the {tests} test periods, {seeds} seed(s)")
    print(format_markdown(summary, paper) if markdown else format_table(summary))
    meta = meta_seconds_at_last_period(results)
    if meta:
        print("meta-generator seconds (training and generation) at the last period (mean over seeds):")
        print("  " + ", ".join(f"{method} {seconds:.2f}" for method, seconds in meta.items()))
        if "asmg-gru-full" in meta and "asmg-gru-multi" in meta:
            print(f"  full / multi: {meta['asmg-gru-full'] / meta['asmg-gru-multi']:.2f}x")
    print(f"wrote {out}/summary.json, summary_valid.json, periods.csv, auc.png")


def run_report(args: argparse.Namespace) -> int:
    require_research_extra()
    from trainer.research.report import read_periods_csv

    seen: set[tuple[str, int, int]] = set()
    results = []
    for directory in args.dirs:
        path = directory / "periods.csv"
        if not path.is_file():
            raise DataError(f"{path} does not exist (expected the output of asmg replay)")
        for r in read_periods_csv(path):
            if (r.method, r.seed, r.period) not in seen:  # the first directory wins
                seen.add((r.method, r.seed, r.period))
                results.append(r)
    write_outputs(results, args.out, args.title, args.markdown, args.paper)
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    require_research_extra()
    from trainer.research import datasets

    print(datasets.fetch_dataset(args.name, args.cache_dir))
    return 0


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="merge the periods.csv of several replays into one summary")
    p.add_argument("dirs", type=Path, nargs="+", help="output directories of asmg replay")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--title", default="merged replay")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--paper", action="store_true", help="add the paper's MovieLens-25M numbers (with --markdown)")
    p.set_defaults(handler=run_report)


def run_pretrain(args: argparse.Namespace) -> int:
    require_research_extra()
    return run_data_parallel(args, lambda: pretrain(args))


def pretrain(args: argparse.Namespace) -> int:
    from trainer.core.model import checkpoint_bytes
    from trainer.core.settings import Settings
    from trainer.learning.learner import BaseLearner
    from trainer.research.encoding import encode_log

    settings = Settings()
    config = settings.model()
    name, table = load_events(args)
    encoded = encode_log(table, config)
    learner = BaseLearner(config, settings.train(), settings.seed)
    learner.fit(encoded.examples(0, len(encoded)), epochs=args.epochs)
    meta = {"pretrained_on": name, "rows": len(encoded), "epochs": args.epochs}
    args.out.write_bytes(checkpoint_bytes(config, learner.params(), meta))
    print(
        f"wrote {args.out} ({len(encoded)} events, {args.epochs} epochs); serve it with ASMG_INITIAL_MODEL={args.out}"
    )
    return 0


def add_pretrain_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="fit an initial model (ASMG_INITIAL_MODEL) on a data set, with ASMG_* sizes")
    add_source_arguments(p)
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    add_base_procs_argument(p)
    p.set_defaults(handler=run_pretrain)


AddParsers = Callable[[argparse._SubParsersAction], None]


def build_parser(extra: Sequence[AddParsers] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asmg", description="ASMG CTR model updating and serving")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_replay_parser, add_fetch_parser, add_report_parser, add_pretrain_parser, *extra):
        add(sub)
    return parser


def main(argv: list[str] | None = None, extra: Sequence[AddParsers] = ()) -> int:
    """Run one ``asmg`` command; ``extra`` adds commands (the service's, from ``app.cli``)."""
    args = build_parser(extra).parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # to run the same command again under torchrun
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.handler(args))
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in RESEARCH_PACKAGES:
            raise
        print(
            f"asmg: error: `asmg {args.command}` needs {exc.name}, from the research extra: "
            "pip install 'asmg-serve[research]'",
            file=sys.stderr,
        )
        return 2
    except (DataError, ValueError, OSError) as exc:
        print(f"asmg: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
