"""A label stream through a cascade whose first level is the cheap learner.

`streamcascade bench --labels FILE`: the requests of FILE (label requests, in
the order they arrived) go through two levels, the `river` backend (an
online classifier, free) and a top level whose answers are the file's own
`reference_label`s replayed and priced as a large model (a stand-in: on this
machine no large model can label thousands of diffs in a session). The
cheap learner answers where its precision at that confidence has lately been
at least the threshold, and learns from every label the top gives.

Reported: the share the cheap learner answered and its precision against
the top's labels (over the stream, its last 1,000 requests, and windows of
`window` requests, the curve), the cascade's accuracy against always asking
the top, and its cost against always-top.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamcascade.backends.replay import ReplayBackendConfig
from streamcascade.backends.river_backend import RiverBackendConfig
from streamcascade.cascade.build import build_engine
from streamcascade.config import (
    AppConfig,
    LearningConfig,
    LevelConfig,
    RouterConfig,
    SandboxConfig,
)
from streamcascade.sandbox import Sandbox
from streamcascade.schemas import CascadeAnswer, CodeRequest

TOP_PRICE_USD_PER_1M = (10.0, 30.0)
"""GPT-4 Turbo's list price (input, output), the top of the HumanEval ladder."""
Progress = Callable[[Iterable[Any], str], Iterable[Any]]


@dataclass(frozen=True)
class LabelOutcome:
    """One request: who answered, what, and what the top's label was."""

    level: int
    """Who published the answer. 1: the cheap learner; 2: the top."""
    top_called: bool
    """Whether the top ran for it (the router may run it and still publish the
    cheap learner's answer, when the two agree)."""
    label: str | None
    top_label: str
    cost_usd: float
    top_cost_usd: float
    """What asking the top alone cost for it."""


@dataclass
class LabelStreamReport:
    name: str
    threshold: float
    outcomes: list[LabelOutcome]
    window: int
    policy: str = "threshold"
    """threshold: the cheap level answers at its threshold; router: the learned
    router decides, at `top_calls_per_wrong_answer`."""
    top_calls_per_wrong_answer: float | None = None
    tail: int = 1000
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @staticmethod
    def _share(part: Sequence[LabelOutcome]) -> tuple[float, float | None]:
        cheap = [o for o in part if not o.top_called]
        precision = sum(o.label == o.top_label for o in cheap) / len(cheap) if cheap else None
        return len(cheap) / max(1, len(part)), precision

    def summary(self, part: Sequence[LabelOutcome]) -> dict[str, Any]:
        share, precision = self._share(part)
        top_cost_usd = sum(o.top_cost_usd for o in part)
        return {
            "requests": len(part),
            "cheap_share": share,
            "cheap_precision": precision,
            "accuracy_vs_top": sum(o.label == o.top_label for o in part) / max(1, len(part)),
            "cost_share_of_top": sum(o.cost_usd for o in part) / top_cost_usd
            if top_cost_usd > 0
            else None,
        }

    def as_dict(self) -> dict[str, Any]:
        last = self.outcomes[-self.tail :]
        curve = [
            {"from": start, **self.summary(self.outcomes[start : start + self.window])}
            for start in range(0, len(self.outcomes), self.window)
        ]
        return {
            "stream": self.name,
            "threshold": self.threshold,
            "policy": self.policy,
            "top_calls_per_wrong_answer": self.top_calls_per_wrong_answer,
            "all": self.summary(self.outcomes),
            f"last_{self.tail}": self.summary(last),
            "windows": curve,
            "seconds": self.seconds,
            "notes": self.notes,
        }

    def table(self) -> str:
        payload = self.as_dict()

        def pct(value: float | None) -> str:
            return "-" if value is None else f"{100 * value:.1f} %"

        lines = [
            f"{self.name}: {len(self.outcomes)} label requests, cheap learner (river) then "
            f"the top (the stream's own labels replayed, priced as a large model at "
            f"${TOP_PRICE_USD_PER_1M[0]:g}/${TOP_PRICE_USD_PER_1M[1]:g} per 1M tokens); "
            + (
                f"the learned router decides (a wrong label weighs "
                f"{self.top_calls_per_wrong_answer:g} top calls)"
                if self.policy == "router"
                else f"threshold {self.threshold:g}"
            ),
            f"{'requests':>16} {'cheap answers':>14} {'its precision':>14} "
            f"{'accuracy':>9} {'cost vs top':>12}",
        ]
        for name, row in (
            ("all", payload["all"]),
            (f"last {self.tail}", payload[f"last_{self.tail}"]),
        ):
            lines.append(
                f"{name:>16} {pct(row['cheap_share']):>14} {pct(row['cheap_precision']):>14} "
                f"{pct(row['accuracy_vs_top']):>9} {pct(row['cost_share_of_top']):>12}"
            )
        lines.append(f"share the cheap learner answered, per {self.window} requests:")
        lines.append(
            "  " + " ".join(f"{100 * w['cheap_share']:.0f}" for w in payload["windows"]) + "  (%)"
        )
        lines.extend(self.notes)
        return "\n".join(lines)


def label_config(
    path: Path, threshold: float, learn: bool = False, top_calls_per_wrong_answer: float = 10.0
) -> AppConfig:
    """Two levels: the cheap learner, and the stream's labels as the top;
    `learn`: the learned router decides who answers (the level's threshold is
    then not consulted)."""
    price_in, price_out = TOP_PRICE_USD_PER_1M
    router = RouterConfig(top_calls_per_wrong_answer=top_calls_per_wrong_answer)
    return AppConfig(
        levels=[
            LevelConfig(name="cheap", backend=RiverBackendConfig(), threshold=threshold,
                        t_test_generations=0, accept_without_tests=True),
            LevelConfig(name="top", backend=ReplayBackendConfig(format="ladder", path=path,
                                                                name="authors-labels"),
                        threshold=0.0, t_test_generations=0, accept_without_tests=True,
                        price_in_usd_per_1m=price_in, price_out_usd_per_1m=price_out),
        ],
        sandbox=SandboxConfig(workers=1),
        learning=LearningConfig(enabled=learn, policy="router", router=router),
    )  # fmt: skip


def read_label_stream(path: Path, limit: int | None = None) -> list[CodeRequest]:
    requests = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                requests.append(CodeRequest.model_validate(json.loads(line)))
            except ValueError as error:  # JSON and pydantic errors alike
                first = str(error).splitlines()[0]
                raise ValueError(f"{path}:{number}: not a request ({first})") from None
    missing = [r.id for r in requests if r.kind != "label" or r.reference_label is None]
    if missing:
        raise ValueError(
            f"{path}: {len(missing)} rows are not label requests with a reference_label "
            f"(first: {missing[0]!r})"
        )
    return requests[:limit]


def _answers(
    engine_requests: Sequence[CodeRequest],
    process: Callable[[Sequence[CodeRequest]], list[CascadeAnswer | Exception]],
    batch_size: int,
    progress: Progress | None,
) -> list[CascadeAnswer]:
    answers: list[CascadeAnswer] = []
    starts: Iterable[int] = range(0, len(engine_requests), batch_size)
    if progress is not None:
        starts = progress(starts, "label stream")
    for start in starts:
        for result in process(engine_requests[start : start + batch_size]):
            if isinstance(result, Exception):
                raise result  # a replayed stream has no reason to fail: a bug, said loudly
            answers.append(result)
    return answers


def label_stream_bench(
    path: Path,
    threshold: float = 0.95,
    batch_size: int = 16,
    limit: int | None = None,
    window: int = 500,
    progress: Progress | None = None,
    router: bool = False,
    top_calls_per_wrong_answer: float = 10.0,
) -> LabelStreamReport:
    """The cascade on the stream in its order, batch by batch (the cheap
    learner learns from each batch's top labels before the next batch), and
    the top alone on the same stream for the cost it would have had.
    `router`: the learned router decides instead of the cheap level's threshold."""
    requests = read_label_stream(path, limit)
    config = label_config(path, threshold, router, top_calls_per_wrong_answer)
    top_level = len(config.levels)
    started = time.perf_counter()
    with Sandbox(config.sandbox) as sandbox:
        cascade = build_engine(config, sandbox).engine
        answers = _answers(requests, cascade.process_many, batch_size, progress)
        seconds = time.perf_counter() - started
        top_only = build_engine(config.model_copy(update={"levels": config.levels[1:]}), sandbox)
        top_answers = _answers(requests, top_only.engine.process_many, 256, None)
    outcomes = [
        LabelOutcome(
            level=answer.level, label=answer.label,
            top_called=any(attempt.level == top_level for attempt in answer.attempts),
            top_label=request.reference_label or "", cost_usd=answer.cost_usd,
            top_cost_usd=top.cost_usd,
        )
        for request, answer, top in zip(requests, answers, top_answers, strict=True)
    ]  # fmt: skip
    return LabelStreamReport(
        name=path.parent.name if path.name == "requests.jsonl" else path.stem,
        threshold=threshold,
        outcomes=outcomes,
        policy="router" if router else "threshold",
        top_calls_per_wrong_answer=top_calls_per_wrong_answer if router else None,
        window=window,
        seconds=seconds,
    )


def plot_share(report: LabelStreamReport, path: Path) -> None:
    """The share the cheap learner answers, and its precision, window by window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows = report.as_dict()["windows"]
    starts = [w["from"] + report.window / 2 for w in windows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(starts, [100 * w["cheap_share"] for w in windows], marker="o", label="answered by it")
    precise = [(s, w["cheap_precision"]) for s, w in zip(starts, windows, strict=True)
               if w["cheap_precision"] is not None]  # fmt: skip
    ax.plot([s for s, _ in precise], [100 * p for _, p in precise], marker="s",
            label="its precision against the top")  # fmt: skip
    ax.axhline(100 * report.threshold, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel(f"request (middle of each window of {report.window})")
    ax.set_ylabel("%")
    ax.set_ylim(0, 102)
    ax.set_title(f"{report.name}: the cheap learner (river) below the top")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
