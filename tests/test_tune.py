from __future__ import annotations

import pytest

from tests.benchmark_scripts import load_benchmark, refusal


def test_only_keeps_the_named_labels_and_the_grids_baseline() -> None:
    tune = load_benchmark("tune")
    args = tune.parse(["--grid", "blend", "--base", '{"batch_size": 256}', "--only", "multi blend 0.5"])
    assert [entry[0] for entry in args.entries] == ["iu", "multi blend 0.5"]
    assert all(entry[2]["batch_size"] == 256 for entry in args.entries)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--base", "{"], "not JSON"),
        (["--base", "[256]"], "must be a JSON object"),
        (["--base", '{"batch": 256}'], "--base"),
        (["--base", '{"lr": 0}'], "must be positive"),
        (["--grid", "nope"], "invalid choice"),
        (["--grid", "blend", "--only", "multi blend 2"], "no such label in the blend grid: multi blend 2"),
        (["--seeds", "0"], "must be a positive integer"),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert message in refusal(load_benchmark("tune").main, argv, capsys)
