"""Tests of scripts/fault_inject.py: its checks and a short run of every fault."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from _faults import SCRIPTS, load_script

SCRIPT = SCRIPTS / "fault_inject.py"

fault_inject = load_script("fault_inject")


def fingerprint_of(index: int) -> str:
    return f"fp-{index}"


def test_fault_inject_compare_clean_log() -> None:
    consumed = [(index, fingerprint_of(index)) for index in range(10)]
    assert fault_inject.compare_consumed(consumed, fingerprint_of) == (0, 0, 0)


def test_fault_inject_compare_counts_faults() -> None:
    consumed = [
        (0, "fp-0"),
        (1, "fp-1"),
        (1, "fp-1"),  # repeated
        (3, "fp-3"),  # 2 lost
        (4, "other"),  # mismatch
        (5, "fp-5"),
        (3, "fp-3"),  # repeated
    ]
    lost, repeated, mismatches = fault_inject.compare_consumed(consumed, fingerprint_of)
    assert lost == 1
    assert repeated == 2
    assert mismatches == 1


def test_fault_inject_read_drops_torn_line(tmp_path: Path) -> None:
    log = tmp_path / "consumed.log"
    log.write_bytes(b"0 fp-0\n1 fp-1\n2 fp-")
    assert fault_inject.read_consumed(log) == [(0, "fp-0"), (1, "fp-1")]
    fd, next_index = fault_inject._open_consumed_log(log)
    try:
        assert next_index == 2
    finally:
        os.close(fd)
    assert log.read_bytes() == b"0 fp-0\n1 fp-1\n"


def test_fault_inject_schedule_covers_kinds() -> None:
    for count in (5, 8, 40):
        schedule = fault_inject.fault_schedule(count, random.Random(count))
        assert len(schedule) == count
        assert set(schedule) == set(fault_inject.FAULT_KINDS)
    assert len(fault_inject.fault_schedule(3, random.Random(0))) == 3


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_fault_inject_short_run_loses_nothing(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--faults",
            "8",
            "--seed",
            "3",
            "--max-seconds",
            "100",
            "--json",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=140,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]

    report = json.loads(report_path.read_text())
    assert report["failures"] == []
    assert sum(report["faults"].values()) == 8
    for kind in fault_inject.FAULT_KINDS:
        assert report["faults"][kind] >= 1, kind
    assert report["snapshot_checks"] == report["faults"]["snapshot_crash"]
    assert report["batches_consumed"] > 8
    assert report["batches_lost"] == 0
    assert report["batches_repeated"] == 0
    assert report["fingerprint_mismatches"] == 0

    restarts = report["faults"]["server_kill"] + report["faults"]["server_term"]
    restarts += report["faults"]["snapshot_crash"]
    assert report["server_starts"] == 1 + restarts
    assert report["trainer_starts"] == 1 + report["faults"]["client_kill"]
