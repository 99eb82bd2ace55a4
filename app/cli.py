"""``asmg``: the research commands of ``trainer.research.cli`` plus ``serve``, ``trainer``, ``demo``
and ``admin``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from redis.exceptions import RedisError

from app.admin_cli import add_admin_parser
from app.workers import PortInUse
from trainer.core.registry import ModelLoadError
from trainer.core.settings import Settings
from trainer.core.store.base import StoreError
from trainer.research import cli as trainer_cli

log = logging.getLogger("asmg")


def _service_logging() -> None:
    # a long-running service reports its swaps, periods and refusals without -v
    logging.getLogger("asmg").setLevel(logging.INFO)


def _settings(**overrides: object) -> Settings:
    """ASMG_* variables, with command-line options on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]


def run_serve(args: argparse.Namespace) -> int:
    from app.workers import serve

    settings = _settings(host=args.host, port=args.port, workers=args.workers)
    _service_logging()
    return serve(settings)


def run_trainer_command(args: argparse.Namespace) -> int:
    from trainer.core.store import open_store
    from trainer.loop.schedule import start_rollover_schedule
    from trainer.loop.worker import PeriodTrainer, lower_priority, report_dict, run_trainer

    settings = _settings()
    _service_logging()
    lower_priority(settings)
    store = open_store(settings, for_trainer=True)
    try:
        trainer = PeriodTrainer(store, settings)
        if args.once:
            for report in trainer.run_once():
                print(report_dict(report))
            store.release_lease(trainer.owner)
            return 0
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        scheduler = start_rollover_schedule(store, settings, trainer.owner, stop)
        log.info("trainer %s running (method %s)", trainer.owner, settings.method)
        run_trainer(store, settings, stop, trainer)  # retries every failure until stopped
        if scheduler:
            scheduler.shutdown(wait=False)
        return 0
    finally:
        store.close()


def run_demo_command(args: argparse.Namespace) -> int:
    from app.demo import run_demo

    return run_demo(periods=args.periods, state_dir=args.state_dir, port=args.port, seed=args.seed)


def add_service_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start the HTTP API (and, on the embedded store, the trainer)")
    p.add_argument("--host", help="bind address (ASMG_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (ASMG_PORT, default 8000)")
    p.add_argument("--workers", type=int, help="API processes sharing the port (ASMG_WORKERS, default 1)")
    p.set_defaults(handler=run_serve)

    p = sub.add_parser("trainer", help="run the trainer alone: train each closed period, publish, notify")
    p.add_argument("--once", action="store_true", help="train the closed periods waiting now, then exit")
    p.set_defaults(handler=run_trainer_command)

    p = sub.add_parser("demo", help="run the service on the embedded store with simulated drifting traffic")
    p.add_argument("--periods", type=trainer_cli.positive_int, default=12, help="periods to simulate")
    p.add_argument("--state-dir", type=Path, help="keep the demo's store here (default: a temporary directory)")
    p.add_argument("--port", type=int, default=0, help="port of the demo server (default: any free one)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=run_demo_command)


def main(argv: list[str] | None = None) -> int:
    try:
        return trainer_cli.main(argv, extra=[add_service_parsers, add_admin_parser])
    except (StoreError, ModelLoadError, RedisError, PortInUse) as exc:
        print(f"asmg: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
