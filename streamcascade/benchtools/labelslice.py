"""Would a small LLM earn a place between the cheap learner and the top, on labels?

`python -m streamcascade.benchtools.labelslice --stream FILE --start 4000 --n 100`:
the cheap learner (river) learns the stream's labels (the top's, replayed)
up to `start`; then, on the `n` requests that follow, in order, the small LLM
labels each twice: the plain prompt, and with an exemplar memory (the top's
labels of the `k` most similar earlier requests, similarity the cosine of
the cheap learner's own diff features, shown as worked examples before it).
River keeps learning every label as the slice goes.

Reported, per arm: the LLM's accuracy against the top's labels on the whole
slice and on the requests river deferred (its confidence below the
threshold: the ones the LLM would see as the next level), seconds and prompt
tokens per request, and what a three-level cascade would give on the slice
(river where sure, else the LLM, else nothing: the LLM accepted whatever it
says, as a level with threshold 0 would be) against river then the top.
A small LLM joins only if the cascade with it keeps the top's accuracy within
2 points; an LLM with one greedy sample has no confidence for a router to
weigh, so it cannot be asked to answer only where it is sure.

Runs the model live on the CPU (about 5 s a request for the 0.5B model).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from streamcascade.backends.base import ChatMessage, GenerationParams, Prompt
from streamcascade.backends.river_backend import RiverBackendConfig, RiverLabelBackend
from streamcascade.backends.text_labels import DiffFeaturizer
from streamcascade.benchtools.labelbench import read_label_stream
from streamcascade.schemas import CodeRequest
from streamcascade.tasks import prompts

log = logging.getLogger(__name__)
SYSTEM = "You are a careful code reviewer. Answer with a label only."
REQUEST_CHARS = 8000
"""A request's diff is cut to this many characters (the model's context is 4,096 tokens)."""
EXEMPLAR_CHARS = 1000
"""Each exemplar's diff is cut shorter: what kind of change it is shows early."""


def cosine(a: dict[str, float], b: dict[str, float]) -> float:
    if len(a) > len(b):
        a, b = b, a
    dot = sum(value * b.get(key, 0.0) for key, value in a.items())
    norm = math.sqrt(sum(v * v for v in a.values())) * math.sqrt(sum(v * v for v in b.values()))
    return dot / norm if norm > 0 else 0.0


def _user(request: CodeRequest, chars: int) -> str:
    text = prompts.classification_prompt(request).messages[-1].content
    labels = ", ".join(f'"{label}"' for label in request.label_set or [])
    if len(text) > chars:
        text = f"{text[:chars]}\n[... diff cut ...]\n\nAnswer with exactly one of: {labels}."
    return text


def plain_prompt(request: CodeRequest) -> Prompt:
    messages = (ChatMessage("system", SYSTEM), ChatMessage("user", _user(request, REQUEST_CHARS)))
    return Prompt(request.id, "classification", messages)


def exemplar_prompt(request: CodeRequest, exemplars: Sequence[tuple[CodeRequest, str]]) -> Prompt:
    """The top's labels for similar earlier requests, as earlier turns (most similar last)."""
    messages = [ChatMessage("system", SYSTEM)]
    for earlier, label in exemplars:
        messages.append(ChatMessage("user", _user(earlier, EXEMPLAR_CHARS)))
        messages.append(ChatMessage("assistant", label))
    messages.append(ChatMessage("user", _user(request, REQUEST_CHARS)))
    return Prompt(request.id, "classification", tuple(messages))


@dataclass
class SliceRow:
    top_label: str
    river_label: str | None
    river_sure: bool
    plain_label: str | None
    memory_label: str | None


@dataclass
class ArmFigures:
    seconds: float = 0.0
    tokens_in: int = 0


def _accuracy(rows: Sequence[SliceRow], pick: str) -> float:
    return sum(bool(getattr(r, pick) == r.top_label) for r in rows) / max(1, len(rows))


def report(rows: Sequence[SliceRow], arms: dict[str, ArmFigures], model: str) -> str:
    deferred = [r for r in rows if not r.river_sure]
    sure = [r for r in rows if r.river_sure]
    river_right = sum(r.river_label == r.top_label for r in sure)
    lines = [
        f"{len(rows)} label requests; river sure of {len(sure)} "
        f"({river_right} right), deferred {len(deferred)}; the top's labels are the "
        f"authors' (replayed)",
        f"{'small LLM (' + model + ')':<52} {'slice':>7} {'deferred':>9} "
        f"{'cascade':>8} {'s/request':>10} {'tokens in':>10}",
        f"{'river then the top (no small LLM)':<52} {'':>7} {'':>9} {100.0:>7.1f}% "
        f"{'':>10} {'':>10}",
    ]
    for arm, pick in (("plain prompt", "plain_label"), ("exemplar memory", "memory_label")):
        figures = arms[arm]
        cascade = (river_right + sum(getattr(r, pick) == r.top_label for r in deferred)) / max(
            1, len(rows)
        )
        lines.append(
            f"{arm:<52} {100 * _accuracy(rows, pick):>6.1f}% "
            f"{100 * _accuracy(deferred, pick):>8.1f}% {100 * cascade:>7.1f}% "
            f"{figures.seconds / max(1, len(rows)):>10.2f} "
            f"{figures.tokens_in / max(1, len(rows)):>10.0f}"
        )
    lines.append(
        "slice, deferred: the LLM's accuracy against the top's labels; cascade: river where "
        "sure, else the LLM (the top never asked), against asking the top for the rest"
    )
    return "\n".join(lines)


def run_slice(
    stream: Path, start: int, n: int, model: str, k: int = 4, threshold: float = 0.95
) -> tuple[list[SliceRow], dict[str, ArmFigures]]:
    from streamcascade.backends.llamacpp import LlamaCppBackend
    from streamcascade.config import load_config
    from streamcascade.models import resolve_model

    requests = read_label_stream(stream, start + n)
    if len(requests) < start + n:
        raise ValueError(f"{stream}: {len(requests)} requests, fewer than start + n")
    app = load_config()  # the embedded default: where models are cached, and may come from
    llm = LlamaCppBackend(
        resolve_model(model, app.model_cache_dir, app.allow_hub_download), model_name=model
    )
    river = RiverLabelBackend(RiverBackendConfig())
    featurizer = DiffFeaturizer()
    seen: list[tuple[CodeRequest, str, dict[str, float]]] = []

    def learn(request: CodeRequest, label: str) -> None:
        river.learn([prompts.classification_prompt(request)], [label])
        seen.append((request, label, featurizer.transform_one(request.prompt)))

    for request in requests[:start]:
        learn(request, request.reference_label or "")
    params = GenerationParams(max_tokens=8, temperature=0.0)
    arms = {"plain prompt": ArmFigures(), "exemplar memory": ArmFigures()}
    rows = []
    for number, request in enumerate(requests[start:], start=1):
        labels = request.label_set or []
        completion = river.generate([prompts.classification_prompt(request)], params)[0][0]
        river_label = completion.text or None
        features = featurizer.transform_one(request.prompt)
        nearest = sorted(seen, key=lambda item: cosine(features, item[2]), reverse=True)[:k]
        shown = [(earlier, label) for earlier, label, _ in reversed(nearest)]
        answers = []
        for arm, prompt in (
            ("plain prompt", plain_prompt(request)),
            ("exemplar memory", exemplar_prompt(request, shown)),
        ):
            started = time.perf_counter()
            out = llm.generate([prompt], params)[0][0]
            arms[arm].seconds += time.perf_counter() - started
            arms[arm].tokens_in += out.tokens_in
            answers.append(prompts.parse_label(out.text, labels))
        top = request.reference_label or ""
        sure = river_label is not None and (completion.confidence or 0.0) >= threshold
        rows.append(SliceRow(top, river_label, sure, answers[0], answers[1]))
        log.info("%d/%d top %s river %s plain %s memory %s", number, n, top, river_label, *answers)
        learn(request, top)
    return rows, arms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stream", type=Path, required=True)
    parser.add_argument("--start", type=int, default=4000)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--k", type=int, default=4, help="exemplars shown")
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct-q4_k_m")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        rows, arms = run_slice(args.stream, args.start, args.n, args.model, args.k)
    except (OSError, ValueError) as error:  # a missing or short stream: one line, no trace
        parser.error(str(error))
    sys.stdout.write(report(rows, arms, args.model) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
