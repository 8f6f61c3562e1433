"""The command line, run as a user runs it, on replayed recordings (no model load)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streamcascade.cli import main

PROMPT = 'def inc(x):\n    """Add one.\n    >>> inc(1)\n    2\n    """\n'


def _write_ladder(path: Path, solution_body: str) -> None:
    row = {
        "task_id": "T/0",
        "prompt": PROMPT,
        "entry_point": "inc",
        "test": "def check(candidate):\n    assert candidate(5) == 6\n",
        "given_tests": ["assert inc(1) == 2"],
        "solution": PROMPT + solution_body,
    }
    path.write_text(json.dumps(row) + "\n")


@pytest.fixture
def replay_config(tmp_path: Path) -> Path:
    _write_ladder(tmp_path / "small.jsonl", "    return x + 1\n")
    _write_ladder(tmp_path / "big.jsonl", "    return 1 + x\n")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
levels:
  - name: small
    backend: {{kind: replay, format: ladder, path: {tmp_path / "small.jsonl"}}}
    t_test_generations: 0
    price_in_usd_per_1m: 1
    price_out_usd_per_1m: 1
  - name: big
    backend: {{kind: replay, format: ladder, path: {tmp_path / "big.jsonl"}}}
    t_test_generations: 0
    threshold: 0
    price_in_usd_per_1m: 10
    price_out_usd_per_1m: 10
"""
    )
    return config


def test_run_answers_jsonl_and_dead_letters_bad_records(
    tmp_path: Path, replay_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = tmp_path / "requests.jsonl"
    good = {"id": "T/0", "prompt": PROMPT, "entry_point": "inc", "visible_tests": ["assert inc(1) == 2"],
            "reference_tests": "def check(candidate):\n    assert candidate(5) == 6\n"}  # fmt: skip
    unknown = dict(good, id="T/404")
    requests.write_text(
        json.dumps(good)
        + "\n{not json\n"
        + json.dumps({"id": "x"})
        + "\n"
        + json.dumps(unknown)
        + "\n"
    )
    out, dead = tmp_path / "answers.jsonl", tmp_path / "dead.jsonl"
    code = main(["run", "--config", str(replay_config), "--input", str(requests), "--out", str(out),
                 "--dead-letters", str(dead), "--no-progress"])  # fmt: skip
    assert code == 0
    [answer] = [json.loads(line) for line in out.read_text().splitlines()]
    assert answer["id"] == "T/0" and answer["level"] == 1 and "x + 1" in answer["code"]
    letters = [json.loads(line) for line in dead.read_text().splitlines()]
    # The same error types as the Kafka path's codec gives.
    assert [d["error_type"] for d in letters] == ["NotJson", "WrongSchema", "UnknownTaskError"]
    assert "prompt: Field required" in letters[1]["reason"]
    assert "T/404" in letters[2]["reason"]
    summary = capsys.readouterr().err
    assert "100.0%" in summary and "1 answered, 3 dead letters" in summary
    # Without --dead-letters they go beside --out, not onto stderr among the logs.
    out.unlink()
    assert main(["run", "--config", str(replay_config), "--input", str(requests), "--out", str(out),
                 "--no-progress", "--no-grade"]) == 0  # fmt: skip
    beside = tmp_path / "answers.dead-letters.jsonl"
    assert len(beside.read_text().splitlines()) == 3
    err = capsys.readouterr().err
    assert f"1 answered, 3 dead letters (in {beside})" in err and "NotJson" not in err


def test_run_reads_and_writes_a_directory_pair_and_names_unknown_connectors(
    tmp_path: Path, replay_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    good = {"id": "T/0", "prompt": PROMPT, "entry_point": "inc",
            "visible_tests": ["assert inc(1) == 2"]}  # fmt: skip
    (inbox / "1.json").write_text(json.dumps(good))
    (inbox / "2.json").write_text("{not json")
    (inbox / "notes.txt").write_text("not a request file")
    code = main(["run", "--config", str(replay_config), "--source", "directory", "--input",
                 str(inbox), "--sink", "directory", "--out", str(outbox), "--no-progress",
                 "--no-grade"])  # fmt: skip
    assert code == 0
    [answer_file] = outbox.iterdir()
    assert answer_file.name == "T%2F0.json"
    assert json.loads(answer_file.read_text())["code"].count("x + 1") == 1
    [dead] = (tmp_path / "outbox.dead-letters.jsonl").read_text().splitlines()
    assert json.loads(dead)["error_type"] == "NotJson"
    assert "1 answered, 1 dead letters" in capsys.readouterr().err
    # A connector nobody installed is a usage error that lists those that are.
    assert main(["run", "--config", str(replay_config), "--sink", "s3", "--no-progress"]) == 2
    assert "no sink named 's3'; installed: directory, jsonl" in capsys.readouterr().err
    assert main(["run", "--config", str(replay_config), "--source", "directory",
                 "--input", str(inbox / "1.json"), "--no-progress"]) == 3  # fmt: skip


def test_bench_writes_table_json_and_png(tmp_path: Path, replay_config: Path) -> None:
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"id": "T/0", "prompt": PROMPT, "entry_point": "inc",
                                    "reference_tests": "def check(c):\n    assert c(5) == 6\n"}) + "\n")  # fmt: skip
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamcascade.cli",
            "bench",
            "--config",
            str(replay_config),
            "--input",
            str(requests),
            "--out-dir",
            str(tmp_path / "out"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (
        "big alone" in proc.stdout
        and "small alone" in proc.stdout
        and "cascade small > big" in proc.stdout
    )
    report = json.loads((tmp_path / "out" / "cascade.json").read_text())
    names = [c["name"] for c in report["configurations"]]
    assert names == ["big alone", "small alone", "cascade small > big"]
    assert report["configurations"][0]["cost_pct_of_top"] == 100.0
    assert (tmp_path / "out" / "cascade.png").read_bytes()[:4] == b"\x89PNG"


def test_run_learns_saves_restores_and_rolls_back_learner_state(
    tmp_path: Path, replay_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = tmp_path / "requests.jsonl"
    good = {
        "id": "T/0",
        "prompt": PROMPT,
        "entry_point": "inc",
        "visible_tests": ["assert inc(1) == 2"],
    }
    requests.write_text((json.dumps(good) + "\n") * 3)
    state_dir = tmp_path / "state"
    args = ["run", "--config", str(replay_config), "--input", str(requests), "--learn",
            "--state-dir", str(state_dir), "--out", str(tmp_path / "a.jsonl"), "--no-progress",
            "--no-grade"]  # fmt: skip
    assert main(args) == 0
    assert main(args) == 0  # the second run starts from the first one's state
    answers = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(answers) == 6 and all("x + 1" in a["code"] or "1 + x" in a["code"] for a in answers)
    capsys.readouterr()
    assert main(["state", "--state-dir", str(state_dir)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[1] for line in listing] == ["requests seen: 3", "requests seen: 6"]
    assert main(["state", "--state-dir", str(state_dir), "--rollback", "1"]) == 0
    assert main(["state", "--state-dir", str(state_dir)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split("\t")[1] == "requests seen: 3"


def test_version_help_and_bad_numbers(
    replay_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as version:
        main(["--version"])
    assert version.value.code == 0 and capsys.readouterr().out.startswith("streamcascade ")
    with pytest.raises(SystemExit) as helped:
        main(["--help"])
    text = capsys.readouterr().out
    assert helped.value.code == 0
    assert all(name in text for name in ("serve", "faults", "kafka", "models", "follow"))
    for flag in ("--limit", "--batch-size"):
        with pytest.raises(SystemExit) as bad:
            main(["run", "--config", str(replay_config), flag, "-1"])
        assert bad.value.code == 2 and "must be at least 1, got -1" in capsys.readouterr().err
    # An empty input says so, without a table of dashes.
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["run", "--config", str(replay_config), "--input", str(empty),
                 "--no-progress"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "0 answered, 0 dead letters" in err and "-----" not in err


def test_explain_tells_why_an_answer_came_from_its_level(
    tmp_path: Path, replay_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = tmp_path / "requests.jsonl"
    # The small level's answer fails this visible test (it returns x + 1): up it goes.
    requests.write_text(json.dumps({"id": "T/0", "prompt": PROMPT, "entry_point": "inc",
                                    "visible_tests": ["assert inc(1) == 3"]}) + "\n")  # fmt: skip
    for learn, policy in ((False, "fixed"), (True, "router")):
        out = tmp_path / f"answers-{policy}.jsonl"
        argv = ["run", "--config", str(replay_config), "--input", str(requests), "--out",
                str(out), "--no-progress", "--no-grade"] + (["--learn"] if learn else [])  # fmt: skip
        assert main(argv) == 0
        capsys.readouterr()
        assert main(["explain", "T/0", "--answers", str(out)]) == 0
        text = capsys.readouterr().out
        assert text.startswith("T/0: answered by level 2 (big)")
        assert "level 1 (small): score 0.00, threshold 1.00, not accepted, tests 0/1 passed" in text
        route = [line for line in text.splitlines() if line.startswith("  ") and ". " in line]
        assert route[0].startswith(f"  1. {policy}: ") and route[-1].endswith("-> stop")
        if policy == "fixed":
            assert "scored 0.00 < threshold 1.00: up -> level 2" in text
        else:
            assert "best plan" in text and "mu " in text
    assert main(["explain", "T/9", "--answers", str(out)]) == 3
    assert "no answer with id 'T/9'" in capsys.readouterr().err


def test_explain_tells_the_hedge_policys_decisions_too(
    tmp_path: Path, replay_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hedge = tmp_path / "hedge.yaml"
    hedge.write_text(replay_config.read_text() + "learning: {enabled: true, policy: hedge}\n")
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"id": "T/0", "prompt": PROMPT, "entry_point": "inc",
                                    "visible_tests": ["assert inc(1) == 3"]}) + "\n")  # fmt: skip
    out = tmp_path / "answers.jsonl"
    assert main(["run", "--config", str(hedge), "--input", str(requests), "--out", str(out),
                 "--no-progress", "--no-grade"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["explain", "T/0", "--answers", str(out)]) == 0
    text = capsys.readouterr().out
    # A fresh level-0 gate knows nothing yet: it skips level 1.
    assert "hedge: level-0 gate: P(level 1 answers it) 0.50 is below its threshold" in text
    assert "skip level 1 -> level 2" in text
    # Without the gate, level 1 runs, fails its test, and the request goes up.
    hedge.write_text(replay_config.read_text()
                     + "learning: {enabled: true, policy: hedge, level0: false}\n")  # fmt: skip
    assert main(["run", "--config", str(hedge), "--input", str(requests), "--out", str(out),
                 "--no-progress", "--no-grade"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["explain", "T/0", "--answers", str(out)]) == 0
    text = capsys.readouterr().out
    assert "hedge: level 1 (small) scored 0.00, which is below its sampled threshold" in text
    assert "the request goes up -> level 2" in text
