"""Table 1 and Table 3 as `asmg report` prints them, from hand-made results."""

from __future__ import annotations

import pytest

from trainer.research.replay import PeriodResult
from trainer.research.report import PAPER_MOVIELENS, format_markdown, meta_seconds_at_last_period, summarise


def result(method: str, seed: int, period: int, auc: float, logloss: float = 0.6, meta: float = 0.0) -> PeriodResult:
    return PeriodResult(method, seed, period, "test", auc, logloss, 100, 1.0, meta)


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip("|").split("|")]


def test_rows_follow_the_papers_order_and_gains_are_paired_per_seed() -> None:
    results = [
        result("asmg-gru-multi", 0, 25, 0.72),
        result("asmg-gru-multi", 1, 25, 0.76),
        result("sml", 0, 25, 0.69),
        result("sml", 1, 25, 0.70),
        result("iu", 0, 25, 0.70),
        result("iu", 1, 25, 0.74),
    ]
    summary = summarise(results)
    assert list(summary) == ["iu", "sml", "asmg-gru-multi"]
    assert summary["asmg-gru-multi"]["paired_auc_diff_mean"] == pytest.approx(0.02)
    assert summary["asmg-gru-multi"]["paired_auc_diff_std"] == pytest.approx(0.0)
    assert summary["sml"]["auc_imp_pct"] == pytest.approx(100 * (0.695 - 0.72) / 0.72)


def test_markdown_marks_the_best_of_each_column_and_adds_the_papers_numbers() -> None:
    results = [
        result("iu", 0, 25, 0.70, logloss=0.60),
        result("spmf", 0, 25, 0.71, logloss=0.58),
        result("asmg-gru-multi", 0, 25, 0.72, logloss=0.59),
    ]
    lines = format_markdown(summarise(results), paper=True).splitlines()
    rows = {cells(line)[0]: cells(line) for line in lines[2:]}
    assert len(cells(lines[0])) == 6
    assert rows["asmg-gru-multi"][1].startswith("**") and not rows["spmf"][1].startswith("**")
    assert rows["spmf"][2].startswith("**") and not rows["asmg-gru-multi"][2].startswith("**")
    assert rows["asmg-gru-multi"][4].startswith("**+0.0200")
    assert rows["iu"][4] == ""
    auc, loss = PAPER_MOVIELENS["spmf"]
    assert rows["spmf"][5] == f"{auc:.4f} / {loss:.4f}"
    assert rows["asmg-gru-multi"][5].startswith("**")  # the paper's best AUC of these rows


def test_meta_time_is_taken_at_each_seeds_last_trained_period() -> None:
    results = [
        result("asmg-gru-full", 0, 30, 0.7, meta=9.0),
        result("asmg-gru-full", 0, 31, 0.7, meta=12.0),
        result("asmg-gru-full", 1, 31, 0.7, meta=14.0),
        result("asmg-gru-multi", 0, 31, 0.7, meta=2.0),
        result("asmg-gru-multi", 0, 30, 0.7, meta=5.0),
        result("iu", 0, 31, 0.7),
    ]
    assert meta_seconds_at_last_period(results) == {"asmg-gru-multi": 2.0, "asmg-gru-full": 13.0}
