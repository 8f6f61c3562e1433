"""`bench --adapt`: the scenario table on a small synthetic ladder (every
scenario, fast) and on the recorded HumanEval ladder (slow, skipped without
../shared/data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from streamcascade.cli import main

MODELS = ("small", "mid", "big")


def _ladder(directory: Path, n_tasks: int = 24) -> Path:
    """Three models on tasks `f_i(x) = x + i`: the small one right on a third,
    the mid one on two thirds, the big one on all; a wrong answer fails the
    visible test half the time (so a pass does not always mean right)."""
    directory.mkdir()
    for rank, model in enumerate(MODELS):
        rows = []
        for i in range(n_tasks):
            right = i % 3 < rank + 1
            body = f"x + {i}" if right else (f"x * 2 + {i}" if i % 2 else f"x - {i + 1}")
            rows.append({
                "task_id": f"Synthetic/{i}",
                "prompt": f"def f_{i}(x):\n    \"\"\"x plus {i}.\"\"\"\n",
                "entry_point": f"f_{i}",
                "test": f"def check(candidate):\n    assert candidate(3) == {3 + i}\n",
                "given_tests": [f"assert f_{i}(0) == {i}"],
                "solution": f"def f_{i}(x):\n    return {body}\n",
            })  # fmt: skip
        (directory / f"{model}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def test_bench_adapt_runs_every_scenario_phase_by_phase(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ladder = _ladder(tmp_path / "ladder")
    out = tmp_path / "out"
    models = "small=0.3/0.3,mid=1/1,big=10/30"
    code = main(["bench", "--adapt", "--ladder", str(ladder), "--models", models,
                 "--orders", "2", "--out-dir", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    payload = json.loads((out / "adapt.json").read_text())
    by_name = {s["scenario"]: s for s in payload["scenarios"]}
    assert set(by_name) == {"swap", "degrade", "join", "outage", "price", "mix", "self-tests",
                            "poison"}  # fmt: skip
    for skipped in ("join", "mix", "self-tests"):
        assert by_name[skipped]["skipped"] and f"{skipped}: skipped" in text
    assert [p["phase"] for p in by_name["outage"]["phases"]] == [1, 2, 3]
    for name in ("swap", "degrade", "outage", "price", "poison"):
        for phase in by_name[name]["phases"]:
            rows = {row["name"]: row for row in phase["rows"]}
            best = rows["best pass/fail rule of the phase"]
            # The best rule of a phase is chosen on its loss: no fixed rule beats it.
            assert best["loss"] <= rows["fixed cascade"]["loss"] + 1e-9
            assert len(phase["recovery_requests"]) == 2
            if phase["phase"] > 1:
                assert "router started fresh here" in rows
    # The top serving the mid model's answers: always asking it gets worse.
    degrade = by_name["degrade"]["phases"]
    assert degrade[1]["rows"][-1]["pass_at_1"] <= degrade[0]["rows"][-1]["pass_at_1"]
    assert "learned, honest Feedback" in {r["name"] for r in by_name["poison"]["phases"][0]["rows"]}
    # Under a price change the router also runs with each budget, set from phase 1.
    for phase in by_name["price"]["phases"]:
        names = [row["name"] for row in phase["rows"]]
        assert any(n.startswith("learned, budget_top_share") for n in names)
        assert any(n.startswith("learned, budget_usd_per_request") for n in names)
        assert all(0.0 <= row["top_share"] <= 1.0 for row in phase["rows"])


def test_bench_adapt_says_what_it_needs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--adapt"]) != 0
    assert "--adapt needs --ladder" in capsys.readouterr().err
    ladder = _ladder(tmp_path / "ladder", n_tasks=3)
    assert main(["bench", "--adapt", "--ladder", str(ladder), "--models", "small=1/1,big=2/2",
                 "--scenario", "earthquake"]) != 0  # fmt: skip
    assert "--scenario earthquake: one of swap" in capsys.readouterr().err


@pytest.mark.slow
def test_on_the_mbpp_ladder_learning_pays_when_prices_move(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The scenario where learning earns its place today: the top 4x cheaper and
    the cheapest level 4x dearer; the frozen prior keeps paying the cheapest."""
    spec = Path(__file__).resolve().parents[1] / "configs" / "ladders" / "mbpp.yaml"
    out = tmp_path / "out"
    code = main(["bench", "--adapt", "--ladder", str(shared_data / "mbpp-ladder-dev"), "--models",
                 str(spec), "--scenario", "price", "--orders", "2", "--out-dir", str(out),
                 "--no-progress"])  # fmt: skip
    assert code == 0
    print(capsys.readouterr().out)
    [price] = json.loads((out / "adapt.json").read_text())["scenarios"]
    rows = {row["name"]: row for row in price["phases"][1]["rows"]}
    learned, frozen = rows["learned router"], rows["frozen prior (no learning)"]
    best = rows["best pass/fail rule of the phase"]
    assert learned["loss_tail"] < 0.6 * frozen["loss_tail"]
    assert learned["loss_tail"] <= 1.05 * best["loss_tail"]
