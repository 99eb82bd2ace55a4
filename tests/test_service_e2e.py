"""The whole loop over real HTTP (uvicorn) on both stores: log, roll over,
train, publish, swap, restart."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import httpx
import pytest
import redis
import torch

from app.serving import ModelHolder, SwapWatcher
from tests.service import AUTH, post_period, running_server, small_settings, traffic, trained_through, wait_for
from trainer.core.health import PHASES
from trainer.core.registry import ensure_initial_model, initial_params, load_version, new_version
from trainer.core.settings import Settings
from trainer.core.store import LocalStore, open_store
from trainer.core.store.base import NewVersion, Pointer
from trainer.loop.worker import PeriodTrainer


@pytest.fixture(params=["redis", "redis-cluster", "local"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "redis-cluster":
        url = request.getfixturevalue("redis_cluster")
        return small_settings(tmp_path / "state", url, redis_mode="cluster", trainer_in_process=True)
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    return small_settings(tmp_path / "state", redis_url, trainer_in_process=True)


def test_periods_publish_in_order_and_predict_follows(settings: Settings) -> None:
    periods = traffic(5)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        probe = {"user_id": "u1", "items": [{"item_id": "i1", "categories": ["c0"]}, {"item_id": 7}]}
        first = client.post("/v1/predict", json=probe).json()
        assert first["model_version"] == 1 and first["period"] == 1  # the initial model serves period 1
        seen = [first["model_version"]]
        for number, events in enumerate(periods, start=1):
            assert post_period(client, events) == number
            rollover = client.post("/admin/rollover", headers=AUTH)
            assert rollover.status_code == 200, rollover.text
            assert rollover.json()["closed_period"] == number
            wait_for(lambda n=number: trained_through(client) >= n, what=f"period {number} trained")
            body = wait_for(
                lambda n=number: (r := client.post("/v1/predict", json=probe).json())["period"] == n + 1 and r,
                what="the new version served",
            )
            assert len(body["scores"]) == 2 and all(0 < s < 1 for s in body["scores"])
            seen.append(body["model_version"])
        assert seen == sorted(seen) and len(set(seen)) == len(seen)  # one new version per period, in order

        models = client.get("/admin/models", headers=AUTH).json()
        assert [m["trained_through"] for m in models] == list(range(0, 6))
        assert models[-1]["serving"] and models[-1]["version"] == seen[-1]
        assert all(m["sha256"] and m["size"] > 0 for m in models)

        status = client.get("/admin/status", headers=AUTH).json()
        assert status["open_period"] == 6 and status["trained_through"] == 5
        assert status["serving_version"] == seen[-1]
        last = status["trainer"]["last_period"]
        assert last["period"] == 5 and last["events"] == len(periods[-1])
        assert 0 <= last["metrics"]["pv_auc"] <= 1
        assert set(last["seconds"]) == set(PHASES)
        # after the window fills and one meta period of warm-up, a generated model (or IU by the gate) is published
        assert {m["method"] for m in models} - {"initial"} <= {"iu", settings.method}
        assert any(m["method"] == settings.method or "quality gate" in m["note"] for m in models[4:])

        metrics = client.get("/metrics").text
        assert f"asmg_last_period_pv_auc {last['metrics']['pv_auc']}" in metrics
        assert f"asmg_model_version {float(seen[-1])}" in metrics
        assert "asmg_trained_through 5.0" in metrics
        assert 'asmg_http_requests_total{route="/v1/predict",status="200"}' in metrics
        assert 'asmg_trainer_phase_seconds{phase="update"}' in metrics


def test_history_comes_from_logged_clicks(settings: Settings) -> None:
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        probe = {"user_id": "fan", "items": [{"item_id": "x", "categories": ["c1"]}]}
        before = client.post("/v1/predict", json=probe).json()["scores"]
        clicks = [{"user_id": "fan", "item_id": f"i{k}", "categories": ["c1"], "label": 1} for k in range(3)]
        post_period(client, clicks)
        after = client.post("/v1/predict", json=probe).json()["scores"]
        other = client.post("/v1/predict", json={**probe, "user_id": "stranger"}).json()["scores"]
        post_period(client, [{**c, "label": 0, "user_id": "fan2"} for c in clicks])  # impressions are no history
        unclicked = client.post("/v1/predict", json={**probe, "user_id": "fan2"}).json()["scores"]
        unknown = client.post("/v1/predict", json={**probe, "user_id": "fan2", "items": [{"item_id": "never"}]})
    assert after != before  # same model, same user: only the history changed
    assert other != after
    assert unclicked != after
    assert unknown.status_code == 200


def test_a_client_supplied_history_replaces_the_logged_one(settings: Settings) -> None:
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        probe = {"user_id": "fan", "items": [{"item_id": "x", "categories": ["c1"]}, {"item_id": "y"}]}
        clicked = [f"i{k}" for k in range(3)]
        post_period(client, [{"user_id": "fan", "item_id": i, "label": 1} for i in clicked])
        logged = client.post("/v1/predict", json=probe).json()["scores"]
        supplied = client.post("/v1/predict", json={**probe, "history": clicked}).json()["scores"]
        as_ints = client.post("/v1/predict", json={**probe, "history": [0, 1, 2], "user_id": "fan"}).json()
        # only the newest history_length (5) ids count: older ones change nothing
        longer = client.post("/v1/predict", json={**probe, "history": ["old"] * 4 + ["a", "b", *clicked]}).json()
        newest = client.post("/v1/predict", json={**probe, "history": ["a", "b", *clicked]}).json()
        empty = client.post("/v1/predict", json={**probe, "history": []}).json()["scores"]
        stranger = client.post("/v1/predict", json={"user_id": "stranger", "items": probe["items"]}).json()
    assert supplied == logged  # the logged clicks had no categories either
    assert as_ints["scores"] != logged
    assert longer["scores"] == newest["scores"] != logged
    assert empty != logged
    assert empty != stranger["scores"]  # an empty history is still this user's row


def test_swaps_under_load_never_fail_a_request(settings: Settings) -> None:
    settings = settings.model_copy(update={"trainer_in_process": False, "method": "iu"})
    periods = traffic(4)
    store = open_store(settings)
    trainer = PeriodTrainer(store, settings)
    responses: list[tuple[int, int | None]] = []
    stop = threading.Event()

    def hammer(url: str, user: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            body = {"user_id": user, "items": [{"item_id": k, "categories": [k % 3]} for k in range(20)]}
            while not stop.is_set():
                r = client.post("/v1/predict", json=body)
                responses.append((r.status_code, r.json().get("model_version") if r.status_code == 200 else None))

    try:
        with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
            workers = [threading.Thread(target=hammer, args=(url, u)) for u in range(4)]
            for w in workers:
                w.start()
            for events in periods:
                post_period(client, events)
                client.post("/admin/rollover", headers=AUTH).raise_for_status()
                trainer.train_pending()
                newest = store.pointer().version
                wait_for(lambda v=newest: any(seen == v for _, seen in responses[-50:]), what=f"v{newest} served")
            stop.set()
            for w in workers:
                w.join()
        published = {v.version for v in store.versions()}
    finally:
        stop.set()
        store.close()
    assert len(published) >= 4  # the initial model and at least three swaps
    assert responses and all(code == 200 for code, _ in responses)
    assert {v for _, v in responses} <= published
    assert len({v for _, v in responses}) >= 4


def test_restarts_resume_from_the_store(settings: Settings) -> None:
    settings = settings.model_copy(update={"trainer_in_process": False})
    periods = traffic(5, seed=1)

    # a trainer killed after every period against one that runs throughout, on the same traffic
    def run(restart_each_period: bool, prefix: str, state_dir: Path) -> torch.Tensor:
        s = settings.model_copy(update={"key_prefix": prefix, "state_dir": state_dir})
        store = open_store(s)
        trainer = PeriodTrainer(store, s)
        try:
            with running_server(s) as url, httpx.Client(base_url=url, timeout=30) as client:
                for events in periods:
                    post_period(client, events)
                    client.post("/admin/rollover", headers=AUTH).raise_for_status()
                    if restart_each_period:  # a clean stop gives the lease up, as `asmg trainer` does
                        store.release_lease(trainer.owner)
                        trainer = PeriodTrainer(store, s)
                    trainer.train_pending()
            newest = store.pointer().version
            assert newest is not None
            return load_version(store, newest, s.model())[1]["mlp.0.weight"]
        finally:
            store.close()

    base = settings.state_dir
    steady = run(False, settings.key_prefix + "a", base / "a")
    restarted = run(True, settings.key_prefix + "b", base / "b")
    assert torch.equal(steady, restarted)

    # an API restart serves what was published, from the period it left off
    s = settings.model_copy(update={"key_prefix": settings.key_prefix + "b", "state_dir": base / "b"})
    with running_server(s) as url, httpx.Client(base_url=url, timeout=30) as client:
        body = client.post("/v1/predict", json={"user_id": 1, "items": [{"item_id": 1}]}).json()
        status = client.get("/admin/status", headers=AUTH).json()
    assert body["period"] == 6 and status["open_period"] == 6 and status["trained_through"] == 5


def test_each_period_is_trained_once(settings: Settings) -> None:
    settings = settings.model_copy(update={"trainer_in_process": False, "method": "iu"})
    store = open_store(settings)
    try:
        with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
            for events in traffic(3):
                post_period(client, events)
                assert client.post("/admin/rollover", headers=AUTH).status_code == 200
                again = client.post("/admin/rollover", headers=AUTH)
                assert again.status_code == 409 and "no interactions" in again.json()["detail"]
            # two trainers racing for the same queue
            trainers = [PeriodTrainer(store, settings) for _ in range(2)]
            threads = [threading.Thread(target=t.train_pending) for t in trainers]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wait_for(lambda: store.trained_through() == 3, what="three periods trained")
            trainers[0].train_pending()
            trainers[1].train_pending()
        through = [v.trained_through for v in store.versions()]
    finally:
        store.close()
    assert through == [0, 1, 2, 3]


def test_a_corrupt_version_is_refused_and_the_old_one_keeps_serving(settings: Settings) -> None:
    settings = settings.model_copy(update={"trainer_in_process": False})
    store = open_store(settings)
    try:
        with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
            probe = {"user_id": 1, "items": [{"item_id": 1}]}
            assert client.post("/v1/predict", json=probe).json()["model_version"] == 1
            post_period(client, traffic(1)[0])
            client.post("/admin/rollover", headers=AUTH).raise_for_status()
            _, state = store.trainer_progress()
            blob = b"not a checkpoint"
            bad = NewVersion(blob, hashlib.sha256(b"what was meant").hexdigest(), 1, "iu")
            info = store.commit_period(bad, state or b"", keep=10)
            assert store.pointer().version == info.version
            wait_for(lambda: "asmg_model_load_failures_total 1.0" in client.get("/metrics").text, what="a refused load")
            assert client.post("/v1/predict", json=probe).json()["model_version"] == 1
            assert client.get("/readyz").json()["model_version"] == 1
            refused = client.post(f"/admin/models/{info.version}/activate", headers=AUTH)
            assert refused.status_code == 409 and "sha256" in refused.json()["detail"]
            # still ready (it serves), and it says which version it cannot follow and why
            ready = client.get("/readyz").json()
            assert ready["ready"] and ready["pointer_version"] == info.version and "sha256" in ready["load_error"]
            assert f"asmg_model_pointer_version {float(info.version)}" in client.get("/metrics").text
            # pinned to the good version, it cannot be unpinned onto the corrupt newest one
            assert client.post("/admin/models/1/activate", headers=AUTH).status_code == 200
            stuck = client.post("/admin/unpin", headers=AUTH)
            assert stuck.status_code == 409 and "pin stays" in stuck.json()["detail"]
            assert store.pointer() == Pointer(1, True)
            store.unpin()  # behind the API's back: a replica starting now finds the pointer on the corrupt version
            assert store.pointer().version == info.version
        # a replica that starts with nothing to serve serves the newest version that loads
        with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["model_version"] == 1
            assert ready.json()["pointer_version"] == info.version and "sha256" in ready.json()["load_error"]
            assert client.post("/v1/predict", json=probe).json()["model_version"] == 1
    finally:
        store.close()


def test_a_pointer_to_a_missing_version_is_counted_and_reported(tmp_path: Path) -> None:
    settings = small_settings(tmp_path / "state")
    store = LocalStore(settings.state_dir)
    try:
        ensure_initial_model(store, settings)
        holder = ModelHolder()
        failures: list[tuple[int, str]] = []
        watcher = SwapWatcher(store, holder, settings.model(), 0.1, on_failure=lambda v, why: failures.append((v, why)))
        assert watcher.sync() and holder.current is not None and holder.current.version == 1
        version = new_version(settings.model(), initial_params(settings), 1, "iu")
        info = store.commit_period(version, b"", keep=10)
        with store._write() as conn:  # the version vanishes from the registry (a lost write, a bad restore)
            conn.execute("DELETE FROM models WHERE version = ?", (info.version,))
        assert not watcher.sync() and not watcher.sync()
        assert failures == [(info.version, f"version {info.version} is not in the registry")]  # counted once
        assert watcher.load_error == failures[0][1] and holder.current.version == 1
    finally:
        store.close()


def test_scheduled_rollover_closes_and_trains_periods(tmp_path: Path) -> None:
    settings = small_settings(tmp_path / "state", rollover_interval_seconds=0.3, method="iu")
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        post_period(client, traffic(1)[0])
        wait_for(lambda: trained_through(client) >= 1, what="a period closed by the schedule and trained")
        status = client.get("/admin/status", headers=AUTH).json()
        # with no new traffic the schedule skips empty periods instead of closing them
        assert status["open_period"] == 2 and status["open_period_events"] == 0


def test_a_store_outage_is_a_503_on_every_route(redis_url: str, tmp_path: Path) -> None:
    settings = small_settings(tmp_path / "state", redis_url, trainer_in_process=False)
    admin = redis.Redis.from_url(redis_url)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        probe = {"user_id": "u", "items": [{"item_id": "i"}]}  # no history: the store is asked for one
        assert client.post("/v1/predict", json=probe).status_code == 200
        # every new connection now fails authentication, and the open ones are dropped
        admin.config_set("requirepass", "outage")
        try:
            admin.client_kill_filter(_type="normal", skipme=True)
            answers = [
                client.post("/v1/predict", json=probe),
                client.post("/v1/interactions", json={"events": [{"user_id": "u", "item_id": "i", "label": 1}]}),
                client.get("/admin/status", headers=AUTH),
            ]
        finally:
            admin.config_set("requirepass", "")
    assert [a.status_code for a in answers] == [503, 503, 503]
    assert {a.json()["detail"] for a in answers} == {"the store is unavailable; retry later"}
