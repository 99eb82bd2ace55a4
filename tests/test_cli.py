from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer.research.cli import main


def write_ratings(directory: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    lines = ["userId,movieId,rating,timestamp"]
    lines += [f"{rng.integers(1, 30)},{rng.integers(1, 40)},{rng.integers(1, 6)}.0,{1000 + i}" for i in range(n)]
    (directory / "ratings.csv").write_text("\n".join(lines) + "\n")
    genres = ["Action", "Comedy", "Drama", "Horror"]
    movies = ["movieId,title,genres"] + [f"{m},Movie {m},{genres[m % 4]}|{genres[(m + 1) % 4]}" for m in range(1, 40)]
    (directory / "movies.csv").write_text("\n".join(movies) + "\n")
    return directory


def test_replay_writes_summary_periods_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_ratings(tmp_path, 31 * 40)
    out = tmp_path / "out"
    small = ["--buckets", "256", "--pretrain-epochs", "2", "--batch-size", "64", "--meta-batch", "64"]
    code = main(
        ["replay", "--data", str(data), "--methods", "iu,asmg-gru-multi", "--seeds", "2", "--out", str(out), *small]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"iu", "asmg-gru-multi"}
    for row in summary.values():
        for key in ("auc_mean", "auc_std", "logloss_mean", "logloss_std"):
            assert np.isfinite(row[key])
    lines = (out / "periods.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * 2 * 20  # header + methods × seeds × scored periods
    assert (out / "auc.png").read_bytes().startswith(b"\x89PNG")
    assert "asmg-gru-multi" in capsys.readouterr().out
    # merging that run with itself changes nothing: duplicates are dropped
    capsys.readouterr()
    assert main(["report", str(out), str(out), "--out", str(tmp_path / "merged"), "--markdown"]) == 0
    assert json.loads((tmp_path / "merged" / "summary.json").read_text()) == summary
    table = capsys.readouterr().out
    assert "| iu |" in table and "| asmg-gru-multi |" in table and "**" in table


def test_report_on_a_directory_without_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "periods.csv" in capsys.readouterr().err


def test_unknown_dataset_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--dataset", "ml-42m"]) == 2
    err = capsys.readouterr().err
    assert "ml-42m" in err and "ml-1m" in err
    assert "Traceback" not in err


def test_missing_column_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_ratings(tmp_path, 400)
    text = (tmp_path / "ratings.csv").read_text().replace("rating,", "score,", 1)
    (tmp_path / "ratings.csv").write_text(text)
    assert main(["replay", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "rating" in capsys.readouterr().err


def test_too_few_rows_for_31_periods(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_ratings(tmp_path, 100)
    assert main(["replay", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "too few" in capsys.readouterr().err


def test_unknown_method_exits_nonzero_without_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "trainer.research.cli", "replay", "--synthetic", "--methods", "iu,magic"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "magic" in done.stderr and "asmg-gru-multi" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_meta_setting_is_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--synthetic", "--warmup", "-1", "--out", str(tmp_path)]) == 2
    assert "warmup" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-1e-3", "nan", "inf"])
def test_a_learning_rate_must_be_a_positive_number(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    from trainer.research.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["replay", "--synthetic", "--meta-lr", value])
    assert exit_info.value.code == 2
    assert "--meta-lr" in capsys.readouterr().err


def test_all_methods_is_the_papers_whole_table_and_the_served_policy() -> None:
    from trainer.learning.updaters import METHODS
    from trainer.research.cli import build_parser

    methods = build_parser().parse_args(["replay", "--synthetic", "--methods", "all"]).methods
    assert methods == [*METHODS, "asmg-gru-multi+gate"]


@pytest.mark.parametrize("missing", ["pandas", "matplotlib"])
def test_a_research_command_without_the_research_extra_names_it(tmp_path: Path, missing: str) -> None:
    # None in sys.modules makes the import fail as an absent package's would
    script = f"import sys; sys.modules[{missing!r}] = None; from app.cli import main; sys.exit(main(sys.argv[1:]))"
    data = write_ratings(tmp_path, 31 * 40)
    run = subprocess.run(
        [sys.executable, "-c", script, "replay", "--data", str(data), "--methods", "iu", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert f"needs {missing}" in run.stderr and "asmg-serve[research]" in run.stderr
    assert "Traceback" not in run.stderr
