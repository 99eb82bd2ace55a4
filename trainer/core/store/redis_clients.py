"""How the store reaches Redis: one server, a primary that Sentinels watch, or a Cluster.

``standalone``
    ``ASMG_REDIS_URL`` is the server's URL (``redis://`` or ``rediss://``).
``sentinel``
    ``ASMG_REDIS_URL`` is ``redis+sentinel://[:password@]host:port[,host:port...]/service``:
    the Sentinels to ask and the name they watch the primary by; a password is the
    primary's (the Sentinels are asked without one). A new connection asks the Sentinels
    where the primary is, so after a failover the clients reconnect to the promoted
    replica; a write that reaches the demoted one is refused (READONLY), which the client
    takes as a failed connection and retries on the new primary.
``cluster``
    ``ASMG_REDIS_URL`` names any node of a Redis Cluster; the client learns the rest.

Every client retries a command once, after a short backoff, when its connection
failed, and never after a timeout (see :mod:`trainer.core.store.redis_store`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ClusterDownError, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry

RedisMode = Literal["standalone", "sentinel", "cluster"]
SENTINEL_SCHEME = "redis+sentinel"

SyncClient = redis.Redis | redis.RedisCluster
AsyncClient = redis.asyncio.Redis | redis.asyncio.RedisCluster


@dataclass(frozen=True)
class SentinelAddress:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    password: str | None


def sentinel_address(url: str) -> SentinelAddress:
    """The parts of a ``redis+sentinel://`` URL; ValueError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"a Sentinel URL starts with {SENTINEL_SCHEME}://, not {parts.scheme or 'nothing'}://")
    credentials, _, hosts = parts.netloc.rpartition("@")
    password = (unquote(credentials.partition(":")[2]) or None) if credentials else None
    sentinels = []
    for host in filter(None, hosts.split(",")):
        name, colon, port = host.rpartition(":")
        if not colon or not name or not port.isdigit():
            raise ValueError(f"Sentinel address {host!r} is not host:port")
        sentinels.append((name.strip("[]"), int(port)))
    if not sentinels:
        raise ValueError("a Sentinel URL names at least one Sentinel (redis+sentinel://host:26379/service)")
    service = parts.path.strip("/")
    if not service or "/" in service:
        raise ValueError("a Sentinel URL ends with the service name the Sentinels watch (…/mymaster)")
    return SentinelAddress(tuple(sentinels), service, password)


def _retry() -> Retry:
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=1, supported_errors=(RedisConnectionError,))


def _async_retry() -> AsyncRetry:
    return AsyncRetry(
        ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=1, supported_errors=(RedisConnectionError,)
    )


# The Cluster clients' own default also retries after a timeout, when the command may have run.
_NO_RETRY_AFTER_TIMEOUT = (RedisConnectionError, ClusterDownError, SlotNotCoveredError)


class _Cluster(redis.RedisCluster):
    ERRORS_ALLOW_RETRY = _NO_RETRY_AFTER_TIMEOUT  # type: ignore[assignment]


class _AsyncCluster(redis.asyncio.RedisCluster):
    ERRORS_ALLOW_RETRY = _NO_RETRY_AFTER_TIMEOUT  # type: ignore[assignment]


def _options(timeout: float) -> dict[str, Any]:
    return {"socket_timeout": timeout, "socket_connect_timeout": min(timeout, 5.0), "decode_responses": False}


def sync_client(url: str, mode: RedisMode, timeout: float) -> SyncClient:
    common = _options(timeout)
    if mode == "cluster":
        return _Cluster.from_url(url, retry=_retry(), **common)
    if mode == "sentinel":
        address = sentinel_address(url)
        sentinel = redis.sentinel.Sentinel(address.sentinels, sentinel_kwargs=common, **common)
        return sentinel.master_for(address.service, password=address.password, retry=_retry())
    return redis.Redis.from_url(url, retry=_retry(), **common)


def async_client(url: str, mode: RedisMode, timeout: float) -> AsyncClient:
    common = _options(timeout)
    if mode == "cluster":
        return _AsyncCluster.from_url(url, retry=_async_retry(), **common)
    if mode == "sentinel":
        address = sentinel_address(url)
        sentinel = redis.asyncio.sentinel.Sentinel(address.sentinels, sentinel_kwargs=common, **common)
        return sentinel.master_for(address.service, password=address.password, retry=_async_retry())
    return redis.asyncio.Redis.from_url(url, retry=_async_retry(), **common)


async def close_async_client(client: AsyncClient) -> None:
    """Close ``client`` and, for a Sentinel-watched primary, its connections to the Sentinels."""
    await client.aclose()
    sentinels = (
        getattr(client.connection_pool, "sentinel_manager", None) if isinstance(client, redis.asyncio.Redis) else None
    )
    if sentinels is not None:
        await sentinels.aclose()
