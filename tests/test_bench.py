"""Tests of ``gmmserve bench``: a tiny run prints both ratios."""

from __future__ import annotations

import re

import pytest
from gmmserve.bench import BenchSettings
from gmmserve.cli import main


def test_bench_prints_positive_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            "bench",
            "--config",
            "simple",
            "--batch-size",
            "4",
            "--batches",
            "6",
            "--seconds",
            "20",
            "--window",
            "2",
            "--samples-per-epoch",
            "40",
        ]
    )
    output = capsys.readouterr().out
    assert status == 0
    loader_ratio = re.search(r"ratio service / in-process loader: (\S+)", output)
    bare_ratio = re.search(r"ratio service / bare gRPC: (\S+)", output)
    assert loader_ratio is not None
    assert bare_ratio is not None
    assert float(loader_ratio.group(1)) > 0
    assert float(bare_ratio.group(1)) > 0
    # Each measurement moved the same 6 batches.
    rows = re.findall(
        r"│ (service stream|in-process loader|bare gRPC)[^│]*│\s+(\d+) │", output
    )
    assert [count for _, count in rows] == ["6", "6", "6"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", 0, "batch_size must be 1 or more, got 0"),
        ("max_batches", 0, "max_batches must be 1 or more, got 0"),
        ("max_seconds", 0.0, "max_seconds must be greater than 0, got 0.0"),
        ("window", 0, "window must be 1 or more, got 0"),
    ],
)
def test_bench_settings_reject_out_of_range(
    field: str, value: float, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        BenchSettings(**{field: value})  # type: ignore[arg-type]


def test_bench_labels_datasets_measured(capsys: pytest.CaptureFixture[str]) -> None:
    # An epoch of 1 dataset makes every batch hold 1 dataset, not 64.
    status = main(
        [
            "bench",
            "--config",
            "simple",
            "--batch-size",
            "64",
            "--batches",
            "3",
            "--seconds",
            "20",
            "--samples-per-epoch",
            "1",
        ]
    )
    output = capsys.readouterr().out
    assert status == 0
    assert "simple: 1 dataset per batch (batch size 64, 1 dataset per epoch)" in output
    assert "batch size 64, window" not in output
