"""The one settings object of the service, read from ``ASMG_*`` variables.

The API (``asmg serve``) and the trainer (``asmg trainer``) read the same
object so a deployment configures both with one environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from trainer.core.config import BaselineConfig, ModelConfig, TrainConfig
from trainer.core.methods import METHODS, base_model_kind
from trainer.core.store.redis_clients import RedisMode, sentinel_address

# methods whose state grows with every period: replay only
UNBOUNDED_METHODS = ("asmg-gru-full",)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ASMG_", extra="ignore")

    # -- where state lives -------------------------------------------------------
    redis_url: str | None = Field(None, description="Redis URL; unset runs the embedded default (SQLite).")
    redis_mode: RedisMode = Field(
        "standalone",
        description="How ASMG_REDIS_URL reaches Redis: `standalone` (one server), `sentinel` "
        "(redis+sentinel://host:port[,host:port...]/service: the primary the Sentinels watch), or `cluster` "
        "(any node of a Redis Cluster; the service's keys share one slot through a hash tag).",
    )
    key_prefix: str = Field("asmg", description="Prefix of every Redis key the service owns.")
    state_dir: Path = Field(
        Path.home() / ".local" / "share" / "asmg",
        description="Embedded store directory (used only without ASMG_REDIS_URL).",
    )

    # -- HTTP ----------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Bind address of `asmg serve`.")
    port: int = Field(8000, ge=1, le=65535, description="Port of `asmg serve`.")
    workers: int = Field(1, ge=1, description="API processes of `asmg serve`, sharing the port (SO_REUSEPORT).")
    environment: Literal["development", "production"] = Field(
        "development", description="`production` refuses to start without ASMG_ADMIN_TOKEN."
    )
    admin_token: SecretStr | None = Field(None, description="Bearer token for /admin; required in production.")
    api_url: str = Field(
        "http://127.0.0.1:8000",
        pattern=r"^https?://",
        description="The API `asmg admin` talks to (through a load balancer, any replica will do).",
    )
    max_body_bytes: int = Field(16 << 20, ge=1, description="Largest request body accepted (413 above).")
    max_items: int = Field(1000, ge=1, description="Most candidate items in one /v1/predict request.")
    max_history: int = Field(1000, ge=0, description="Most item ids in a client-supplied /v1/predict history.")
    max_events: int = Field(10000, ge=1, description="Most events in one /v1/interactions request.")
    max_id_length: int = Field(256, ge=1, description="Longest user, item or category id accepted.")
    max_categories: int = Field(32, ge=1, description="Most categories on one item.")
    # a replica that misses the swap notice (its subscription was reconnecting) finds the new version by this
    # check: within this long plus the load. One pointer read per interval: negligible. docs/benchmarks.md
    swap_poll_seconds: float = Field(
        0.5, gt=0, description="How often a replica re-checks the serving pointer, in case it missed a swap notice."
    )
    store_timeout_seconds: float = Field(
        2.0,
        gt=0,
        description="Longest wait of an API request for the store (Redis command timeout; SQLite lock wait); "
        "past it the request is a 503.",
    )
    torch_threads: int = Field(1, ge=1, description="Torch intra-op threads per process.")
    batch_max_items: int = Field(
        4096,
        ge=1,
        description="Concurrent predict requests are scored together, in one forward pass, up to this many "
        "candidates a batch; 1 scores each request alone.",
    )
    batch_turns: int = Field(
        4,
        ge=0,
        description="Turns of the event loop a batch stays open for requests arriving on other connections "
        "before it is scored (each turn reads every connection; a lone request loses tens of microseconds).",
    )
    batch_wait_ms: float = Field(
        0.0,
        ge=0,
        description="If above 0, a batch stays open this long instead of for ASMG_BATCH_TURNS turns: "
        "measured slower (docs/benchmarks.md).",
    )

    # -- the model -----------------------------------------------------------------
    method: str = Field("asmg-gru-multi", description="Update method, one of `asmg replay --methods`.")
    embedding_dim: int = Field(8, ge=1, description="Embedding size m of ids and categories.")
    user_buckets: int = Field(1 << 16, ge=1, description="Rows user ids are hashed into.")
    item_buckets: int = Field(1 << 16, ge=1, description="Rows item ids are hashed into.")
    category_buckets: int = Field(1 << 10, ge=1, description="Rows category ids are hashed into.")
    history_length: int = Field(30, ge=0, description="Latest clicks that make a user's history.")
    hidden: Annotated[tuple[int, ...], NoDecode] = Field((20, 10), description="MLP hidden sizes, e.g. 20,10.")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the base model.")
    batch_size: int = Field(256, ge=1, description="Base-model batch size.")
    epochs: int = Field(1, ge=1, description="Passes over each period.")
    base_procs: int = Field(
        1,
        ge=1,
        description="Processes each base-model fit runs on, data parallel (torch.distributed, gloo on loopback): "
        "the trainer starts N − 1 helper processes; 1 fits in the trainer's own process.",
    )
    window: int = Field(3, ge=1, description="ASMG sequence length k.")
    meta_hidden: int = Field(4, ge=1, description="GRU hidden size d per coordinate.")
    meta_lr: float = Field(1e-3, gt=0, description="Adam learning rate of the meta generator.")
    meta_blend: float | None = Field(
        None,
        gt=0,
        le=2,
        description="Serve (1 − B)·IU's model + B·the generated one; unset: the method's chosen value "
        "(0.5 for the ASMG-GRU methods, 1 for asmg-linear). 1 serves the generated model whole, as the paper.",
    )
    warmup: int = Field(1, ge=0, description="Periods of meta training before generated models are served.")
    native_kernels: bool = Field(
        True,
        description="Run the meta generator's GRU in C, built on first use with the machine's C compiler "
        "(several times faster); false, or no compiler, runs it in torch.",
    )
    incctr_lambda: float = Field(0.1, ge=0, le=1, description="IncCTR: weight of the distillation loss.")
    spmf_fraction: float = Field(
        0.1, gt=0, le=1, description="SPMF: reservoir size as a fraction of the first period's rows."
    )
    spmf_ratio: float = Field(0.25, ge=0, description="SPMF: reservoir rows replayed per new positive.")
    seed: int = Field(0, description="Seed of the initial model and of training.")
    initial_model: Path | None = Field(None, description="Checkpoint to serve before the first period closes.")

    # -- the trainer ---------------------------------------------------------------
    trainer_in_process: bool | None = Field(
        None, description="Run the trainer inside `asmg serve`; default: yes on the embedded store, no on Redis."
    )
    rollover_interval_seconds: float | None = Field(None, gt=0, description="Close a period every N seconds.")
    rollover_cron: str | None = Field(None, description="Close a period on this crontab (5 fields, UTC).")
    trainer_poll_seconds: float = Field(1.0, gt=0, description="How often the trainer looks for closed periods.")
    lease_seconds: float = Field(
        30.0,
        gt=0,
        description="Trainer lease, renewed at every phase of a period; a standby trainer takes over once it "
        "lapses (on the embedded store at once when the holder's process is gone).",
    )
    trainer_store_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="Redis command timeout (SQLite lock wait) of the trainer, whose calls move whole periods, "
        "model versions and its state.",
    )
    trainer_retry_max_seconds: float = Field(
        60.0,
        gt=0,
        description="Longest wait between the trainer's retries after a failure (the store unreachable, a period "
        "failing); the waits double from 1 s, with jitter, and it retries until it succeeds.",
    )
    trainer_stall_seconds: float = Field(
        900.0,
        gt=0,
        description="The trainer counts as stalled (GET /healthz/trainer 503, asmg_trainer_healthy 0) after this "
        "long without progress; set it above your longest period's training time.",
    )
    check_fraction: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="Share of each period's events (drawn at random) held back from the update to check the "
        "generated model against IU's on events neither learnt from, then learnt before publishing; 0 turns "
        "the check off.",
    )
    check_tolerance: float = Field(
        0.5,
        ge=0,
        description="The check publishes IU instead of a generated model whose LogLoss on the held-back events "
        "exceeds IU's by more than this fraction: a backstop against a diverging generator, not a close call "
        "(the quality gate judges those).",
    )
    keep_versions: int = Field(10, ge=2, description="Model versions kept in the registry.")
    full_snapshot_every: int = Field(
        10,
        ge=1,
        description="Every this many versions (by number) the trainer publishes a full snapshot; the others are "
        "deltas on the version before where they are at most half its size. 1 publishes only full snapshots. "
        "The registry also keeps the versions back to the full snapshot the oldest kept one needs.",
    )
    keep_log_periods: int = Field(
        0,
        ge=0,
        description="Trained periods whose interaction logs are kept; older ones are deleted as each period "
        "is trained (users' recent clicks stay). 0 keeps every log.",
    )
    quality_gate: bool = Field(True, description="Publish IU instead of a generated model that scores worse.")
    trainer_nice: int = Field(
        10, ge=0, le=19, description="CPU priority (nice level) `asmg trainer` runs at, below serving; 0: unchanged."
    )

    @field_validator("hidden", mode="before")
    @classmethod
    def _parse_hidden(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(int(part) for part in value.split(",") if part.strip())
        return value

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in METHODS:
            raise ValueError(f"unknown method {value!r}; known: {', '.join(METHODS)}")
        if value in UNBOUNDED_METHODS:
            raise ValueError(
                f"{value} keeps every period's model and data, so the trainer's state grows without bound; "
                "it is for `asmg replay`, not the service"
            )
        return value

    @field_validator("rollover_cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value:
            from apscheduler.triggers.cron import CronTrigger

            CronTrigger.from_crontab(value, timezone="UTC")  # raises ValueError naming the bad field
        return value

    @model_validator(mode="after")
    def _production_needs_token(self) -> Settings:
        if self.environment == "production" and not self.admin_token:
            raise ValueError("ASMG_ADMIN_TOKEN must be set when ASMG_ENVIRONMENT=production")
        if self.rollover_interval_seconds and self.rollover_cron:
            raise ValueError("set ASMG_ROLLOVER_INTERVAL_SECONDS or ASMG_ROLLOVER_CRON, not both")
        if self.redis_mode == "sentinel" and self.redis_url:
            try:
                sentinel_address(self.redis_url)
            except ValueError as exc:
                raise ValueError(f"ASMG_REDIS_URL with ASMG_REDIS_MODE=sentinel: {exc}") from exc
        return self

    @property
    def embedded(self) -> bool:
        return self.redis_url is None

    @property
    def runs_trainer_in_process(self) -> bool:
        return self.embedded if self.trainer_in_process is None else self.trainer_in_process

    def model(self) -> ModelConfig:
        return ModelConfig(
            embedding_dim=self.embedding_dim,
            user_buckets=self.user_buckets,
            item_buckets=self.item_buckets,
            category_buckets=self.category_buckets,
            history_length=self.history_length,
            hidden=self.hidden,
            kind=base_model_kind(self.method),
        )

    def baselines(self) -> BaselineConfig:
        return BaselineConfig(self.incctr_lambda, self.spmf_fraction, self.spmf_ratio)

    def train(self) -> TrainConfig:
        return TrainConfig(lr=self.lr, batch_size=self.batch_size, epochs=self.epochs)
