"""Whole tables: finished runs are kept and not redone; parallel processes give the same numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cli import write_ratings
from trainer.research.cli import main
from trainer.research.report import read_periods_csv

SMALL = ["--buckets", "256", "--pretrain-epochs", "2", "--batch-size", "64", "--meta-batch", "64"]
SMALL += ["--threads", "1", "--jobs", "1"]  # one process unless a test asks for more


def replay(data: Path, out: Path, methods: str, *extra: str) -> int:
    return main(
        ["replay", "--data", str(data), "--methods", methods, "--seeds", "2", "--out", str(out), *SMALL, *extra]
    )


def test_an_interrupted_table_resumes_without_redoing_runs(tmp_path: Path) -> None:
    data = write_ratings(tmp_path, 31 * 40)
    out = tmp_path / "out"
    assert replay(data, out, "iu") == 0
    done = {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    assert set(done) == {"iu-seed0.csv", "iu-seed1.csv"}
    assert replay(data, out, "iu,incctr") == 0
    after = {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    assert {k: after[k] for k in done} == done  # the finished runs were not touched
    assert set(after) == set(done) | {"incctr-seed0.csv", "incctr-seed1.csv"}
    results = read_periods_csv(out / "periods.csv")
    assert {(r.method, r.seed) for r in results} == {(m, s) for m in ("iu", "incctr") for s in (0, 1)}


def test_parallel_processes_give_the_same_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_ratings(tmp_path, 31 * 40)
    assert replay(data, tmp_path / "one", "iu,asmg-gru-multi") == 0
    capsys.readouterr()
    assert replay(data, tmp_path / "two", "iu,asmg-gru-multi", "--jobs", "2") == 0
    # progress counts periods (with an ETA), not only whole runs: 4 runs of 20 updates each
    progress = capsys.readouterr().err
    assert "4/4 runs" in progress and "80/80" in progress
    # runs are shared out one by one, so one process loads the Θ_0 the other pre-trained and saved
    assert sorted(p.name for p in (tmp_path / "two" / "pretrained").glob("*.pt")) == [
        "seed0-emb-mlp.pt",
        "seed1-emb-mlp.pt",
    ]
    one = read_periods_csv(tmp_path / "one" / "periods.csv")
    two = read_periods_csv(tmp_path / "two" / "periods.csv")
    assert [(r.method, r.seed, r.period, r.auc, r.logloss) for r in one] == [
        (r.method, r.seed, r.period, r.auc, r.logloss) for r in two
    ]


def test_resuming_under_other_settings_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_ratings(tmp_path, 31 * 40)
    out = tmp_path / "out"
    assert replay(data, out, "iu") == 0
    assert replay(data, out, "iu", "--lr", "0.01") == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "train" in err
