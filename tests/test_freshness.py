"""What makes freshness across replicas observable: each replica's swap time and commit-to-served
delay, the pointer's commit time, and the proxy with which benchmarks/freshness.py makes a
replica lose its swap notices."""

from __future__ import annotations

import multiprocessing
import re
import threading
import time
from pathlib import Path

import httpx
import pytest

from app.metrics import ServiceMetrics, StoreCollector
from tests.benchmark_scripts import load_benchmark
from tests.service import (
    AUTH,
    free_port,
    post_period,
    running_server,
    small_settings,
    traffic,
    trained_through,
    wait_for,
)
from trainer.core.registry import ensure_initial_model
from trainer.core.store import LocalStore, RedisStore

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"


def sample(exposition: str, name: str) -> float | None:
    found = re.search(rf"^{re.escape(name)} (\S+)$", exposition, re.M)
    return None if found is None else float(found.group(1))


def test_a_swap_records_when_it_happened_and_how_long_after_the_commit() -> None:
    metrics = ServiceMetrics()
    metrics.record_swap(1, 1, published=1000.0, now=5000.0)  # the version a replica starts with: no delay
    text = metrics.exposition().decode()
    assert sample(text, "asmg_model_swapped_timestamp_seconds") == 5000.0
    assert sample(text, "asmg_model_swap_delay_seconds_count") == 0.0

    metrics.record_swap(2, 2, published=5100.0, now=5100.75)
    metrics.record_swap(3, 3, published=5200.0, now=5204.5)  # a notice lost: found by the periodic check
    text = metrics.exposition().decode()
    assert sample(text, "asmg_model_version") == 3.0
    assert sample(text, "asmg_model_published_timestamp_seconds") == 5200.0
    assert sample(text, "asmg_model_swapped_timestamp_seconds") == 5204.5
    assert sample(text, "asmg_model_swaps_total") == 3.0
    assert sample(text, "asmg_model_swap_delay_seconds_count") == 2.0
    assert sample(text, "asmg_model_swap_delay_seconds_sum") == pytest.approx(5.25)
    assert sample(text, 'asmg_model_swap_delay_seconds_bucket{le="1.0"}') == 1.0
    assert sample(text, 'asmg_model_swap_delay_seconds_bucket{le="5.0"}') == 2.0

    metrics.record_swap(2, 2, published=5100.0, now=6000.0)  # a rollback is not a commit's delay
    text = metrics.exposition().decode()
    assert sample(text, "asmg_model_swap_delay_seconds_count") == 2.0
    assert sample(text, "asmg_model_swapped_timestamp_seconds") == 6000.0


def test_the_scrape_exports_when_the_pointers_version_was_committed(tmp_path: Path) -> None:
    settings = small_settings(tmp_path)
    store = LocalStore(tmp_path / "store", 2.0)
    try:
        collector = StoreCollector(store, 900.0)
        names = {family.name for family in collector.collect()}
        assert "asmg_model_pointer_published_timestamp_seconds" not in names  # no version yet
        ensure_initial_model(store, settings)
        [family] = [f for f in collector.collect() if f.name == "asmg_model_pointer_published_timestamp_seconds"]
        info = store.version(1)
        assert info is not None and family.samples[0].value == info.created
    finally:
        store.close()


def test_a_replica_that_swapped_exports_every_series_the_recording_rules_read(tmp_path: Path) -> None:
    settings = small_settings(tmp_path / "state", trainer_in_process=True)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        post_period(client, traffic(1)[0])
        assert client.post("/admin/rollover", headers=AUTH).status_code == 200
        wait_for(lambda: trained_through(client) >= 1, what="period 1 trained")
        wait_for(lambda: (r := client.get("/readyz").json())["model_version"] == r["pointer_version"], what="swap")
        exposition = client.get("/metrics").text
    assert sample(exposition, "asmg_model_version") == 2.0
    swapped = sample(exposition, "asmg_model_swapped_timestamp_seconds")
    published = sample(exposition, "asmg_model_published_timestamp_seconds")
    assert swapped is not None and published is not None and 0 <= swapped - published < 30
    assert sample(exposition, "asmg_model_swap_delay_seconds_count") == 1.0  # version 1 → 2; not the start
    assert sample(exposition, "asmg_model_pointer_published_timestamp_seconds") == published
    exported = set(re.findall(r"^(asmg_\w+)[{ ]", exposition, re.M))
    wanted = set(re.findall(r"\basmg_\w+", RULES.read_text()))
    assert wanted and wanted <= exported, sorted(wanted - exported)


def test_resp_frames_are_cut_whole_and_only_whole() -> None:
    frame_end = load_benchmark("freshness").frame_end
    notice = b"*3\r\n$7\r\nmessage\r\n$11\r\nfresh:swaps\r\n$2\r\n12\r\n"
    confirm = b"*3\r\n$9\r\nsubscribe\r\n$11\r\nfresh:swaps\r\n:1\r\n"
    stream = confirm + notice + b"+OK\r\n$-1\r\n"
    ends = []
    pos = 0
    while (end := frame_end(stream, pos)) is not None:
        ends.append(end)
        pos = end
    assert ends == [len(confirm), len(confirm + notice), len(confirm + notice) + 5, len(stream)]
    for cut in range(1, len(notice)):
        assert frame_end(notice[:cut], 0) is None, cut


def test_the_benchmarks_proxy_loses_a_replicas_notices_only_while_told_to(redis_server: str) -> None:
    bench = load_benchmark("freshness")
    upstream = int(redis_server.rsplit(":", 1)[1].split("/")[0])
    port = free_port()
    dropping, dropped, stop = multiprocessing.Value("b", 0), multiprocessing.Value("i", 0), multiprocessing.Event()
    proxy = threading.Thread(target=bench.run_proxy, args=(port, upstream, dropping, dropped, stop), daemon=True)
    proxy.start()
    prefix = f"fresh{time.monotonic_ns()}"
    direct = RedisStore(redis_server, prefix)
    behind = wait_for(lambda: _connected(f"redis://127.0.0.1:{port}/0", prefix), timeout=10, what="the proxy")
    try:
        assert behind.wait_for_swap(0.05) is False  # subscribes
        ensure_initial_model(direct, small_settings(Path("/nonexistent"), key_prefix=prefix))
        assert behind.wait_for_swap(5.0) is True
        assert behind.pointer().version == 1  # commands pass both ways

        dropping.value = 1
        direct.activate(1)  # moves the pointer (pins it): a notice on the channel
        assert behind.wait_for_swap(0.5) is False
        assert dropped.value == 1
        assert behind.pointer().pinned  # the periodic check still finds the change

        dropping.value = 0
        direct.unpin()
        assert behind.wait_for_swap(5.0) is True
        assert dropped.value == 1
    finally:
        behind.close()
        direct.close()
        stop.set()
        proxy.join(5)


def _connected(url: str, prefix: str) -> RedisStore | None:
    store = RedisStore(url, prefix)
    if store.ping():
        return store
    store.close()
    return None
