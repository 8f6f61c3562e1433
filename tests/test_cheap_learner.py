"""The cheap learner as a level: the `river` backend answers label requests
with the precision it had at that confidence, learns from the top's labels,
gives no answer to code, and a label stream measures it (the real commit
stream in ../shared/data when it is there)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from streamcascade.backends import BackendPool
from streamcascade.backends.base import ChatMessage, Completion, GenerationParams, Prompt
from streamcascade.backends.replay import LadderReplayBackend
from streamcascade.backends.river_backend import RiverBackendConfig, RiverLabelBackend
from streamcascade.backends.text_labels import OnlineLabeler, PrecisionAtConfidence
from streamcascade.benchtools.labelbench import label_stream_bench
from streamcascade.cascade import Level
from streamcascade.cascade.routed import RoutedCascadeEngine
from streamcascade.config import LevelConfig
from streamcascade.sandbox import Sandbox
from streamcascade.schemas import CascadeAnswer, CodeRequest, Feedback

LABELS = ["fix", "docs", "test"]


def _diff(kind: str, rng: random.Random) -> str:
    """A small synthetic commit of each kind, with words that give it away
    most of the time, and noise."""
    noise = " ".join(rng.sample(["value", "state", "render", "props", "emit", "slot"], 3))
    if kind == "docs":
        path, line = f"docs/{rng.choice(['guide', 'api'])}.md", f"+Explain how {noise} works"
    elif kind == "test":
        path = f"packages/core/__tests__/{rng.choice(['a', 'b'])}.spec.ts"
        line = f"+  it('handles {noise}', () => expect(x).toBe(1))"
    else:
        path, line = "packages/core/src/index.ts", f"-  if (a) {noise}()\n+  if (a && b) {noise}()"
    return (
        f"Which kind of change is this commit?\n\ndiff --git a/{path} b/{path}\n"
        f"--- a/{path}\n+++ b/{path}\n@@ -1,2 +1,2 @@ export function run\n{line}\n"
    )


def _stream(n: int, seed: int = 0) -> list[CodeRequest]:
    rng = random.Random(seed)
    requests = []
    for i in range(n):
        truth = rng.choice(LABELS)
        shown = truth if rng.random() < 0.9 else rng.choice(LABELS)  # a tenth look like another
        requests.append(
            CodeRequest(
                id=f"c{i}",
                kind="label",
                prompt=_diff(shown, rng),
                label_set=LABELS,
                reference_label=truth,
            )
        )
    return requests


def _write(requests: list[CodeRequest], path: Path) -> Path:
    path.write_text("".join(r.model_dump_json() + "\n" for r in requests), encoding="utf-8")
    return path


def test_the_confidence_is_the_precision_of_recent_predictions_at_least_as_sure() -> None:
    calibration = PrecisionAtConfidence(window=100, min_support=10)
    assert calibration.predict_one(0.9) == 0.0  # nothing known: never sure
    for _ in range(100):
        calibration.learn_one(0.9, True)
        calibration.learn_one(0.5, False)
    assert calibration.predict_one(0.9) == 1.0
    assert calibration.predict_one(0.5) == 0.5  # both regions, the second always wrong
    for _ in range(100):  # the world changed: what was right when sure is now wrong
        calibration.learn_one(0.9, False)
    assert calibration.predict_one(0.9) == 0.0


def test_the_learner_state_is_plain_json_and_predicts_the_same_once_loaded() -> None:
    labeler = OnlineLabeler()
    for request in _stream(200):
        labeler.learn_one(request.prompt, request.reference_label or "")
    state = json.loads(json.dumps(labeler.state_dict()))
    clone = OnlineLabeler.from_state_dict(state)
    for request in _stream(20, seed=1):
        assert clone.predict_one(request.prompt) == labeler.predict_one(request.prompt)
    with pytest.raises(ValueError, match="version"):
        OnlineLabeler.from_state_dict({**state, "version": 99})


def _levels(sandbox: Sandbox, stream: Path, threshold: float = 0.9) -> list[Level]:
    pool = BackendPool()
    cheap = LevelConfig(name="cheap", backend=RiverBackendConfig(), threshold=threshold,
                        t_test_generations=0)  # fmt: skip
    top = LevelConfig(name="top", backend={"kind": "replay", "format": "ladder", "path": stream},
                      threshold=0.0, t_test_generations=0, price_in_usd_per_1m=10.0)  # fmt: skip
    return [Level(1, cheap, pool.get(cheap.backend), sandbox),
            Level(2, top, pool.get(top.backend), sandbox)]  # fmt: skip


def test_the_cheap_level_learns_the_tops_labels_and_answers_what_it_is_sure_of(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    requests = _stream(600)
    engine = RoutedCascadeEngine(_levels(sandbox, _write(requests, tmp_path / "s.jsonl")))
    answers = []
    for start in range(0, len(requests), 8):
        batch = engine.process_many(requests[start : start + 8])
        assert not any(isinstance(a, Exception) for a in batch)
        answers.extend(batch)
    first, last = answers[:32], answers[-200:]  # calibration needs 30 predictions
    assert all(a.level == 2 for a in first)  # it knows nothing yet: everything goes up
    cheap = [(a, r) for a, r in zip(answers[-200:], requests[-200:], strict=True) if a.level == 1]
    assert len(cheap) >= 60, f"the cheap level answered {len(cheap)} of the last 200"
    assert sum(a.label == r.reference_label for a, r in cheap) / len(cheap) >= 0.9
    assert all(a.cost_usd == 0.0 and a.score >= 0.9 for a, _ in cheap)
    assert all(a.cost_usd > 0 for a in last if a.level == 2)


def test_a_cheap_level_that_cannot_learn_costs_no_answer(
    sandbox: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    requests = _stream(40)
    levels = _levels(sandbox, _write(requests, tmp_path / "s.jsonl"))

    def broken(prompts: list[Prompt], answers: list[str]) -> None:
        raise RuntimeError("disk full")

    river = levels[0].backend.backend()  # type: ignore[attr-defined]
    river.learn = broken
    answers = RoutedCascadeEngine(levels).process_many(requests)
    assert [a.label for a in answers] == [r.reference_label for r in requests]  # type: ignore[union-attr]
    assert "could not learn from the top's answers" in caplog.text


def test_a_code_request_gets_no_answer_from_the_cheap_level() -> None:
    backend = RiverLabelBackend(RiverBackendConfig(min_support=1))
    backend.learn([Prompt("a", "classification", (ChatMessage("user", "+x"),))], ["fix"])
    ask = Prompt("f", "solutions", (ChatMessage("user", "def f(): ..."),))
    [[completion, again]] = backend.generate([ask], GenerationParams(n=2))
    assert completion.text == again.text == "" and completion.confidence is None


def test_a_vote_is_weighed_by_the_confidence_a_model_gives(sandbox: Sandbox) -> None:
    class Sure:
        model_name = "sure"

        def __init__(self, confidence: float | None) -> None:
            self.confidence = confidence

        def generate(
            self, prompts: list[Prompt], params: GenerationParams
        ) -> list[list[Completion]]:
            return [[Completion("docs", 0, 0, 0.0, confidence=self.confidence)] * params.n
                    for _ in prompts]  # fmt: skip

    config = LevelConfig(name="x", backend=RiverBackendConfig(), threshold=0.9, k_solutions=2)
    request = CodeRequest(id="r", kind="label", prompt="diff", label_set=LABELS)
    unsure = Level(1, config, Sure(0.6), sandbox).step([request])[0]  # type: ignore[arg-type]
    assert unsure.label == "docs" and unsure.attempt.score == 0.6 < unsure.attempt.threshold
    llm = Level(1, config, Sure(None), sandbox).step([request])[0]  # type: ignore[arg-type]
    assert llm.attempt.score == 1.0  # an LLM's vote is its share
    # The level returns evidence only: what the policy makes of it is the driver's.
    assert not unsure.attempt.accepted and not llm.attempt.accepted


def test_a_recorded_label_answers_a_classification_prompt(tmp_path: Path) -> None:
    requests = _stream(3)
    backend = LadderReplayBackend(_write(requests, tmp_path / "s.jsonl"))
    prompt = Prompt("c1", "classification", (ChatMessage("user", "which kind?"),))
    assert backend.generate([prompt], GenerationParams())[0][0].text == requests[1].reference_label
    solutions = Prompt("c1", "solutions", (ChatMessage("user", "write it"),))
    assert backend.generate([solutions], GenerationParams()) == [[]]


def test_the_label_stream_bench_reports_share_precision_and_cost(tmp_path: Path) -> None:
    report = label_stream_bench(_write(_stream(1200), tmp_path / "stream.jsonl"), window=200)
    summary = report.as_dict()
    last = summary["last_1000"]
    assert last["cheap_share"] > 0.3 and last["cheap_precision"] > 0.85
    assert last["cost_share_of_top"] < 0.75
    assert summary["windows"][0]["cheap_share"] < summary["windows"][-1]["cheap_share"]
    assert "last 1000" in report.table() and "stream's own labels replayed" in report.table()


def test_on_the_real_commit_stream_the_cheap_learner_meets_its_target(shared_data: Path) -> None:
    """Issue 24's target: over the last 1,000 commits the cheap learner answers
    at least 30 % at 95 % precision or better, and the cascade keeps the top's
    accuracy within 2 points at no more than 70 % of its cost."""
    stream = shared_data / "commit-stream-vue" / "requests.jsonl"
    if not stream.exists():
        pytest.skip(f"{stream} not found")
    report = label_stream_bench(stream)
    print("\n" + report.table())
    last = report.as_dict()["last_1000"]
    assert last["cheap_share"] >= 0.30 and last["cheap_precision"] >= 0.95
    assert last["accuracy_vs_top"] >= 0.98 and last["cost_share_of_top"] <= 0.70


def test_on_the_real_commit_stream_the_router_lets_the_cheap_learner_answer(
    shared_data: Path,
) -> None:
    """On the router path (a wrong label weighs 10 top calls) the cheap learner
    answers labels too: the router reads its confidence on the log-odds scale."""
    stream = shared_data / "commit-stream-vue" / "requests.jsonl"
    if not stream.exists():
        pytest.skip(f"{stream} not found")
    report = label_stream_bench(stream, router=True, top_calls_per_wrong_answer=10.0)
    print("\n" + report.table())
    last = report.as_dict()["last_1000"]
    # Measured: 30.9 % at 93.2 %, accuracy 97.9 %, cost 62.4 % (the threshold
    # path above: 32.4 % at 95.1 %, 98.4 %, 60.2 %).
    assert last["cheap_share"] >= 0.25 and last["cheap_precision"] >= 0.9
    assert last["accuracy_vs_top"] >= 0.97 and last["cost_share_of_top"] <= 0.70


def test_bench_labels_prints_the_table_and_writes_json_and_a_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamcascade.cli import main

    stream = _write(_stream(300), tmp_path / "stream.jsonl")
    out = tmp_path / "out"
    assert main(["bench", "--labels", str(stream), "--out-dir", str(out), "--no-progress"]) == 0
    assert "cheap answers" in capsys.readouterr().out
    assert json.loads((out / "labels.json").read_text())["all"]["requests"] == 300
    argv = ["bench", "--labels", str(stream), "--learn", "--weight", "0.1", "--out-dir", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    assert "the learned router decides" in capsys.readouterr().out
    assert json.loads((out / "labels.json").read_text())["policy"] == "router"
    assert (out / "labels-share.png").stat().st_size > 0
    not_labels = tmp_path / "code.jsonl"
    not_labels.write_text(CodeRequest(id="f", prompt="def f(): ...", entry_point="f")
                          .model_dump_json() + "\n")  # fmt: skip
    assert main(["bench", "--labels", str(not_labels), "--out-dir", str(out)]) != 0
    assert "not label requests" in capsys.readouterr().err
    not_json = tmp_path / "bad.jsonl"
    not_json.write_text(_stream(1)[0].model_dump_json() + "\n{oops\n")
    assert main(["bench", "--labels", str(not_json), "--out-dir", str(out)]) != 0
    assert f"{not_json}:2: not a request" in capsys.readouterr().err


def test_what_it_learned_survives_a_restart_and_a_bad_file_only_costs_the_learning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state" / "river.json"
    config = RiverBackendConfig(min_support=5, state_path=state, save_every=50)
    ask = [Prompt(r.id, "classification", (ChatMessage("user", r.prompt),)) for r in _stream(120)]
    labels = [r.reference_label or "" for r in _stream(120)]
    first = RiverLabelBackend(config)
    first.learn(ask[:40], labels[:40])
    assert not state.exists()  # fewer than save_every labels: nothing written yet
    first.learn(ask[40:], labels[40:])
    assert state.exists() and not state.with_name("river.json.tmp").exists()
    again = RiverLabelBackend(config)
    assert again.labeler.n_learned == 120

    def said(backend: RiverLabelBackend) -> list[tuple[str, float | None]]:
        answers = backend.generate(ask[:10], GenerationParams())
        return [(c.text, c.confidence) for [c] in answers]

    assert said(again) == said(first) and any(text for text, _ in said(first))
    state.write_text("{not json")
    fresh = RiverLabelBackend(config)
    assert fresh.labeler.n_learned == 0 and "starting afresh" in caplog.text


def test_feedback_on_its_own_answers_teaches_the_cheap_level(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    requests = _stream(400)
    levels = _levels(sandbox, _write(requests, tmp_path / "s.jsonl"))
    engine = RoutedCascadeEngine(levels)
    answers = []
    for start in range(0, len(requests), 8):
        answers.extend(engine.process_many(requests[start : start + 8]))
    river = levels[0].backend.backend()  # type: ignore[attr-defined]
    own = [a for a in answers if isinstance(a, CascadeAnswer) and a.level == 1]
    top = [a for a in answers if isinstance(a, CascadeAnswer) and a.level == 2]
    assert own and top
    n_learned, n_calibrated = river.labeler.n_learned, len(river.labeler.calibration._recent)
    assert engine.learn_one(Feedback(id=own[-1].id, passed=True))  # a label like the top's
    assert river.labeler.n_learned == n_learned + 1
    assert engine.learn_one(Feedback(id=own[-2].id, passed=False))  # wrong, this sure
    assert len(river.labeler.calibration._recent) == n_calibrated + 2
    # Feedback on the top's answer, or on one already taught, is not the cheap level's.
    assert not engine.learn_one(Feedback(id=top[-1].id, passed=False))
    assert not engine.learn_one(Feedback(id=own[-1].id, passed=False))
    assert river.labeler.n_learned == n_learned + 1


def test_the_inbox_hands_feedback_to_the_engine_even_when_no_policy_learns() -> None:
    from streamcascade.config import KafkaConfig
    from streamcascade.service.inbox import Inbox
    from streamcascade.service.stats import ServiceStats

    heard: list[Feedback] = []

    def engine_learns(feedback: Feedback) -> bool:
        heard.append(feedback)
        return True

    inbox = Inbox(KafkaConfig(), "i", "s", None, ServiceStats(), None,  # type: ignore[arg-type]
                  lambda work: work(), lambda *a: None, None, engine_learns)  # type: ignore[arg-type,return-value]  # fmt: skip
    assert inbox._apply([Feedback(id="a", passed=True)], [{"ignored": "no learner"}]) == (1, 0)
    assert [f.id for f in heard] == ["a"]


def test_the_exemplar_prompt_shows_the_tops_labels_of_similar_requests_most_similar_last() -> None:
    from streamcascade.benchtools.labelslice import cosine, exemplar_prompt, plain_prompt

    assert cosine({"a": 1.0}, {"a": 2.0}) == pytest.approx(1.0)
    assert cosine({"a": 1.0}, {"b": 1.0}) == 0.0 and cosine({}, {"a": 1.0}) == 0.0
    requests = _stream(3)
    huge = requests[2].model_copy(update={"prompt": "diff " + "x" * 20000})
    prompt = exemplar_prompt(huge, [(requests[0], "fix"), (requests[1], "docs")])
    roles = [m.role for m in prompt.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert prompt.messages[4].content == "docs"  # the most similar comes last, nearest the question
    assert len(prompt.messages[-1].content) < 9000 and "diff cut" in prompt.messages[-1].content
    assert '"test"' in prompt.messages[-1].content  # the labels survive the cut
    assert plain_prompt(requests[0]).messages[-1].content.startswith("Which kind")


def test_the_label_slice_runs_the_real_small_model_plain_and_with_exemplars(
    tmp_path: Path,
) -> None:
    """The real 0.5B model labels one request of a small stream both ways."""
    from streamcascade.benchtools.labelslice import report, run_slice

    stream = _write(_stream(12), tmp_path / "stream.jsonl")
    rows, arms = run_slice(stream, start=10, n=2, model="qwen2.5-coder-0.5b-instruct-q4_k_m", k=2)
    assert len(rows) == 2 and all(r.top_label in LABELS for r in rows)
    assert arms["exemplar memory"].tokens_in > arms["plain prompt"].tokens_in > 0
    table = report(rows, arms, "qwen")
    assert "exemplar memory" in table and "river then the top" in table
    with pytest.raises(ValueError, match="fewer than start"):
        run_slice(stream, start=10, n=5, model="qwen2.5-coder-0.5b-instruct-q4_k_m")


def test_the_label_slice_says_in_one_line_that_its_stream_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamcascade.benchtools.labelslice import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--stream", str(tmp_path / "nope.jsonl")])
    assert exit_info.value.code == 2
    assert "No such file" in capsys.readouterr().err
