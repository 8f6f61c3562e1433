"""Fault runs on a real broker, 1,000 requests each, the service as real
processes: SIGKILL and restart it, restart the broker, kill one of two
instances. At least once: nothing lost. Exactly once: nothing lost, nothing
duplicated (answers read with read_committed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamcascade.benchtools.faults import HEADER, fault_table

RUNS = [
    (scenario, delivery)
    for scenario in ("sigkill", "broker-restart", "group-kill")
    for delivery in ("at_least_once", "exactly_once")
]


@pytest.mark.slow
@pytest.mark.parametrize(("scenario", "delivery"), RUNS)
def test_fault_run_loses_nothing(scenario: str, delivery: str, tmp_path: Path) -> None:
    [report] = fault_table(tmp_path, [(scenario, delivery)], n_requests=1000, n_kills=5)  # type: ignore[list-item]
    print(f"\n{HEADER}\n{report.row()}")
    assert report.n_faults >= 1
    assert report.n_lost == 0, report
    if delivery == "exactly_once":
        assert report.n_duplicates == 0, report
    # The services still running at the end stop cleanly on SIGTERM.
    assert all(code == 0 for code in report.exit_codes), report


@pytest.mark.slow
def test_a_short_soak_with_hostile_programs_loses_nothing_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """The 1-hour soak's checks, on 30 s of it (`faults --soak-s 3600` runs it whole)."""
    from streamcascade.benchtools.soak import soak

    report = soak(tmp_path, seconds=30, rate_per_s=2.0)
    print("\n" + report.text())
    assert report.n_hostile >= 5 and report.n_malformed >= 1
    assert report.n_lost == 0, report
    assert report.n_dead_letters == report.n_malformed, report
    assert report.leftover_processes == 0 and report.leftover_ipc == 0, report
    assert report.leftover_cgroups == 0, report
    assert report.exit_code == 0, report
