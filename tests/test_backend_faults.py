"""The batch-first engine and backend failures end to end, against real HTTP
servers on loopback (a recorded-answer OpenAI-compatible endpoint) and, for the
fault run, a real broker. Speeds are printed by `streamcascade perf engine`;
here only what must hold at any speed is checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamcascade.benchtools.engine_perf import backend_fault_run, engine_concurrency


def test_batched_answers_equal_one_at_a_time_over_http() -> None:
    result = engine_concurrency(n_requests=12, slots=4, delay_s=0.02)
    assert result.same_answers


@pytest.mark.slow
def test_top_server_killed_restarted_and_left_down_loses_nothing(tmp_path: Path) -> None:
    report = backend_fault_run(tmp_path, n_requests=96, cooldown_s=0.5)
    print("\n" + report.table())
    assert report.n_lost == 0, report
    assert report.n_answers + report.n_dead_letters == report.n_requests
    # The top was down twice: its breaker opened, and closed once it was back.
    assert report.breaker_opened >= 2 and report.breaker_closed >= 1, report
    assert set(report.dead_letter_reasons) == {"backend_unavailable: level 2 'top'"}, report
    # Answers came from both levels, the top's among them after the restart.
    assert set(report.answers_by_level) == {1, 2}, report
