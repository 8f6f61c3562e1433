"""Fault runs on a real broker, 1,000 requests each, the service as real
processes: SIGKILL and restart it, restart the broker (once, and 20 times at
random moments with random down-times), kill one of two instances; and on a
real three-node cluster: a rolling restart, the partition leader SIGKILLed,
the active controller SIGKILLed. At least once: nothing lost. Exactly once:
nothing lost, nothing duplicated (answers read with read_committed). No
service ends by itself. How soon it answers after the broker (or a new
leader) is back is printed in each row, not asserted: a speed target is a
figure to read, not a test that fails on a busy machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamcascade.benchtools.faults import HEADER, fault_table

RUNS = [
    (scenario, delivery)
    for scenario in (
        "sigkill", "broker-restart", "group-kill", "rolling-restart", "leader-kill",
        "controller-kill",
    )
    for delivery in ("at_least_once", "exactly_once")
]  # fmt: skip


def _check(report: object) -> None:
    from streamcascade.benchtools.faults import FaultReport

    assert isinstance(report, FaultReport)
    print(f"\n{HEADER}\n{report.row()}")
    assert report.n_faults >= 1
    assert report.n_lost == 0, report
    if report.delivery == "exactly_once":
        assert report.n_duplicates == 0, report
    assert report.n_exits == 0, report
    # The services still running at the end stop cleanly on SIGTERM.
    assert all(code == 0 for code in report.exit_codes), report


@pytest.mark.slow
@pytest.mark.parametrize(("scenario", "delivery"), RUNS)
def test_fault_run_loses_nothing(scenario: str, delivery: str, tmp_path: Path) -> None:
    [report] = fault_table(tmp_path, [(scenario, delivery)], n_requests=1000, n_kills=5)  # type: ignore[list-item]
    _check(report)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("delivery", "max_down_s"), [("exactly_once", 30.0), ("at_least_once", 10.0)]
)
def test_twenty_broker_restarts_at_random_moments_lose_nothing(
    delivery: str, max_down_s: float, tmp_path: Path
) -> None:
    """Down-times drawn from 0 to 30 s with exactly once, the stricter delivery;
    at least once draws them from 0 to 10 s to keep the suite's time in bounds
    (`streamcascade faults --scenario broker-restarts` runs both at 30 s)."""
    [report] = fault_table(
        tmp_path, [("broker-restarts", delivery)], n_requests=1000,  # type: ignore[list-item]
        n_restarts=20, max_down_s=max_down_s,
    )  # fmt: skip
    assert report.n_faults == 20
    _check(report)


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


@pytest.mark.slow
def test_a_fault_run_stopped_with_sigterm_leaves_no_broker_or_service_behind(
    tmp_path: Path,
) -> None:
    """SIGTERM (a CI job cancelled, `kill`) ends `streamcascade faults` as Ctrl-C
    does: its brokers and services are stopped on the way out."""
    import signal
    import subprocess
    import sys
    import time

    def ours() -> list[str]:
        found = subprocess.run(["pgrep", "-af", str(tmp_path)], capture_output=True, text=True)
        return [line for line in found.stdout.splitlines() if "pgrep" not in line]

    command = [sys.executable, "-m", "streamcascade", "faults", "--scenario", "broker-restart",
               "--requests", "3000", "--dir", str(tmp_path)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    log = tmp_path / "0-broker-restart-at_least_once" / "service-i1.log"
    while "batch of" not in (log.read_text() if log.exists() else ""):
        assert process.poll() is None and time.monotonic() < deadline, "no batch answered"
        time.sleep(0.2)
    assert any("streamcascade serve" in line for line in ours())  # the service runs
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    left = ours()
    deadline = time.monotonic() + 10  # a JVM may take a moment to exit
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = ours()
    assert left == [], left


@pytest.mark.slow
def test_the_answer_counter_resumes_where_it_left_off_with_each_new_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counter replaces a client that read nothing for a while (its
    kafka-python client can stall as the service's can); a new one must
    neither miss answers nor count one twice."""
    import time

    from streamcascade.benchtools import faults
    from streamcascade.service.broker import LocalKafka
    from streamcascade.service.kafka_io import ensure_topics
    from streamcascade.service.tools import feed

    monkeypatch.setattr(faults, "REBUILD_IDLE_S", 0.5)
    with LocalKafka(tmp_path / "kafka", partitions=2) as broker:
        _, kafka = faults.write_replay_config(
            tmp_path, broker.bootstrap_servers, 8, "at_least_once"
        )
        ensure_topics(kafka)
        with faults.AnswerCounter(kafka) as answers:
            feed(kafka, [faults.request_value(i) for i in range(5)], topic=kafka.topics.answers)
            assert answers.wait_distinct(5, 60)
            time.sleep(3.0)  # idle: several new clients in turn
            feed(kafka, [faults.request_value(i) for i in range(5, 8)], topic=kafka.topics.answers)
            assert answers.wait_distinct(8, 60)
            time.sleep(2.0)
            assert answers.total() == 8
            assert answers.n_clients >= 3
