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


def _codet(directory: Path, n_tasks: int = 24) -> Path:
    """CodeT-format recordings for `_ladder`'s tasks: ten solutions, right on
    even tasks only, and ten test samples that agree with whatever the
    solutions return (so self-testing always passes, right or wrong)."""
    directory.mkdir()
    files: dict[str, list[str]] = {
        name: []
        for name in (
            "prompts-for-solutions",
            "prompts-for-tests",
            "codegen16b-solutions",
            "codegen16b-tests",
        )
    }
    for i in range(n_tasks):
        prompt = f'def f_{i}(x):\n    """x plus {i}."""\n'
        got = 1 + i if i % 2 == 0 else 2 + i
        body = f"    return x + {i}\n" if i % 2 == 0 else f"    return x + {i + 1}\n"
        rows = {
            "prompts-for-solutions": {"task_id": f"Synthetic/{i}", "prompt": prompt},
            "prompts-for-tests": {"task_id": f"Synthetic/{i}", "prompt": prompt + "# test\n"},
            "codegen16b-solutions": {"prompt": prompt, "samples": [body] * 10},
            "codegen16b-tests": {"prompt": prompt + "# test\n",
                                 "samples": [f"f_{i}(1) == {got}\n"] * 10},
        }  # fmt: skip
        for name, row in rows.items():
            files[name].append(json.dumps(row) + "\n")
    for name, lines in files.items():
        (directory / f"{name}.jsonl").write_text("".join(lines))
    return directory


def test_bench_adapt_runs_every_scenario_phase_by_phase(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ladder = _ladder(tmp_path / "ladder")
    # A second population on two of the same models (and one of its own).
    other = tmp_path / "other"
    other.mkdir()
    for model in ("small", "mid", "huge"):
        rows = (ladder / f"{model if model != 'huge' else 'big'}.jsonl").read_text().splitlines()
        renamed = [json.dumps({**json.loads(r), "task_id": f"Other/{i}"})
                   for i, r in enumerate(rows[:18])]  # fmt: skip
        (other / f"{model}.jsonl").write_text("\n".join(renamed) + "\n")
    codet = _codet(tmp_path / "codet")
    out = tmp_path / "out"
    models = "small=0.3/0.3,mid=1/1,big=10/30"
    code = main(["bench", "--adapt", "--ladder", str(ladder), "--models", models,
                 "--mix-ladder", str(other), "--mix-models", "small=0.3/0.3,mid=1/1,huge=5/5",
                 "--codet", str(codet), "--orders", "2", "--out-dir", str(out),
                 "--no-progress"])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    payload = json.loads((out / "adapt.json").read_text())
    by_name = {s["scenario"]: s for s in payload["scenarios"]}
    assert set(by_name) == {"swap", "degrade", "join", "outage", "price", "mix", "self-tests",
                            "poison"}  # fmt: skip
    assert not any("skipped" in s for s in by_name.values()), text
    assert [p["phase"] for p in by_name["outage"]["phases"]] == [1, 2, 3]
    # mix: the shared models only, on one population, the other, and back.
    assert "on small, mid" in by_name["mix"]["what"]
    assert [p["phase"] for p in by_name["mix"]["phases"]] == [1, 2, 3]
    # join: the mid model is missing, then joins: phase 1 has one level fewer.
    assert "mid joins below the top" in by_name["join"]["what"]
    # self-tests: CodeT's level passes its own tests always and is right on
    # half the tasks: the rule that trusts it is wrong half the time.
    self_tests = by_name["self-tests"]["phases"][1]["rows"]
    fixed = next(row for row in self_tests if row["name"] == "fixed cascade")
    assert fixed["pass_at_1"] < 0.8
    for name in ("swap", "degrade", "join", "outage", "price", "mix", "self-tests", "poison"):
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
    out = tmp_path / "out"
    assert main(["bench", "--adapt", "--ladder", str(ladder), "--models", "small=1/1,big=2/2",
                 "--scenario", "mix", "--scenario", "self-tests", "--scenario", "join",
                 "--out-dir", str(out), "--no-progress"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "mix: skipped: needs a second request population (--mix-ladder" in text
    assert "self-tests: skipped: needs the CodeT recordings (--codet DIR)" in text
    assert "join: skipped: needs three levels" in text
    codet = tmp_path / "codet"
    codet.mkdir()
    for name in ("prompts-for-solutions", "prompts-for-tests", "codegen16b-solutions",
                 "codegen16b-tests"):  # fmt: skip
        (codet / f"{name}.jsonl").write_text("")
    assert main(["bench", "--adapt", "--ladder", str(ladder), "--models", "small=1/1,big=2/2",
                 "--codet", str(codet), "--no-progress", "--out-dir", str(out)]) != 0  # fmt: skip
    assert "no recordings for 3 of the ladder's tasks" in capsys.readouterr().err
    ok = ["bench", "--adapt", "--ladder", str(ladder), "--models", "small=1/1,big=2/2",
          "--no-progress", "--out-dir", str(out)]  # fmt: skip
    assert main([*ok, "--scenario", "mix", "--mix-ladder", str(ladder)]) != 0
    assert "--mix-ladder needs --mix-models" in capsys.readouterr().err
    good_codet = _codet(tmp_path / "codet-ok", n_tasks=3)
    assert main([*ok, "--scenario", "self-tests", "--codet", str(good_codet),
                 "--codet-price", "abc"]) != 0  # fmt: skip
    err = capsys.readouterr().err
    assert "--codet-price: price 'abc' is not PRICE_IN/PRICE_OUT" in err and "internal" not in err


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
