"""Recorded ladders: a directory of model answers in the ladder row format,
replayed as a cascade.

A ladder directory holds one JSON-lines file per model, one row per task
(`task_id`, `prompt`, `entry_point`, `test`, `given_tests`, `solution`) and,
optionally, a file of the problems alone. Which files are models, in which
order (cheapest first) and at which prices is not in the directory, and never
in code: the user names them in a `LadderSpec`, as a YAML file or inline::

    --models starcoder-15b=0.30/0.30,codellama-34b-instruct=0.78/0.78,gpt-3.5-turbo-0613=1.5/2

A malformed or missing row is a dead letter with its reason, never a crash of
the run.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streamcascade.backends.replay import ReplayBackendConfig
from streamcascade.config import AppConfig, LevelConfig, SandboxConfig
from streamcascade.schemas import CodeRequest, DeadLetter, IOExample

_FROZEN = ConfigDict(frozen=True, extra="forbid")
_INLINE = re.compile(r"^\s*([^=,\s]+)\s*=\s*([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*$")


class LadderModel(BaseModel):
    """One recorded model: its file in the ladder directory and its prices."""

    model_config = _FROZEN
    name: str = Field(min_length=1)
    file: str | None = Field(default=None, description="Default: NAME.jsonl.")
    price_in_usd_per_1m: float = Field(ge=0.0)
    price_out_usd_per_1m: float = Field(ge=0.0)

    @property
    def filename(self) -> str:
        return self.file or f"{self.name}.jsonl"


class LadderSpec(BaseModel):
    """The models of a ladder, cheapest first, and where its problems are."""

    model_config = _FROZEN
    models: list[LadderModel] = Field(min_length=1)
    problems: str | None = Field(
        default=None,
        description="A file of the tasks (same row format, no solution); default: "
        "problems.jsonl when the directory has one, else the top model's file.",
    )


def parse_ladder_spec(value: str) -> LadderSpec:
    """A YAML file's path, or the inline form `name=IN/OUT,name=IN/OUT,...`
    (USD per 1M tokens in and out; files are NAME.jsonl)."""
    path = Path(value)
    if path.suffix in {".yaml", ".yml"} or path.is_file():
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"ladder spec file not found: {path}") from None
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML: {error}") from None
        try:
            return LadderSpec.model_validate(raw)
        except ValidationError as error:
            raise ValueError(f"{path}: {_first_error(error)}") from None
    models = []
    for part in value.split(","):
        match = _INLINE.match(part)
        if match is None:
            raise ValueError(
                f"--models: {part.strip()!r} is not NAME=PRICE_IN/PRICE_OUT "
                "(USD per 1M tokens), nor a YAML file"
            )
        name, price_in, price_out = match.groups()
        models.append(
            LadderModel(
                name=name,
                price_in_usd_per_1m=float(price_in),
                price_out_usd_per_1m=float(price_out),
            )
        )
    return LadderSpec(models=models)


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return f"{where}: {first['msg']}" if where else str(first["msg"])


def check_ladder(directory: Path, spec: LadderSpec) -> None:
    """Raise a one-line error when the directory or a named file is missing."""
    if not directory.is_dir():
        raise ValueError(f"ladder directory not found: {directory}")
    for model in spec.models:
        if not (directory / model.filename).is_file():
            found = sorted(p.name for p in directory.glob("*.jsonl"))
            raise ValueError(
                f"{directory}: no {model.filename} for model {model.name!r} (found: "
                f"{', '.join(found) or 'no .jsonl files'})"
            )


def ladder_config(
    directory: Path, spec: LadderSpec, sandbox: SandboxConfig | None = None
) -> AppConfig:
    """The recorded models as a cascade that accepts the first answer passing its
    visible tests (one solution each, no generated tests)."""
    check_ladder(directory, spec)
    levels = []
    for position, model in enumerate(spec.models):
        levels.append(
            LevelConfig(
                name=model.name,
                backend=ReplayBackendConfig(
                    format="ladder", path=directory / model.filename, name=model.name
                ),
                k_solutions=1,
                t_test_generations=0,
                threshold=1.0 if position < len(spec.models) - 1 else 0.0,
                price_in_usd_per_1m=model.price_in_usd_per_1m,
                price_out_usd_per_1m=model.price_out_usd_per_1m,
            )
        )
    return AppConfig(levels=levels, sandbox=sandbox or SandboxConfig())


def problems_file(directory: Path, spec: LadderSpec) -> Path:
    if spec.problems is not None:
        return directory / spec.problems
    default = directory / "problems.jsonl"
    return default if default.is_file() else directory / spec.models[-1].filename


def _io_examples(value: Any, field: str) -> list[IOExample]:
    """APPS's `{input, output}` pairs (a list, or a Python-literal string of one)
    as stdin/stdout examples: the output list's items are the printed lines."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(f"{field} is not a list of input/output pairs") from None
    if not isinstance(value, list):
        raise ValueError(f"{field} is not a list of input/output pairs")
    examples = []
    for pair in value:
        if not isinstance(pair, dict) or "input" not in pair or "output" not in pair:
            raise ValueError(f"{field} holds an item without input and output")
        output = pair["output"]
        printed = "\n".join(str(x) for x in output) if isinstance(output, list) else str(output)
        examples.append(IOExample(input=str(pair["input"]), output=printed))
    return examples


def apps_request(row: dict[str, Any]) -> CodeRequest:
    """An APPS row (`description`, `sample_io`, `test_list`, `starter_code`) as a
    `program` request. Call-based problems too: their recordings, like the
    evaluation they were made for, read the arguments from stdin, one per line,
    and print the result, so the starter code is shown and the I/O is the same."""
    task = row.get("task_id") or row.get("id")
    if task is None:
        raise ValueError("row lacks task_id (or id)")
    prompt = str(row["description"])
    starter = str(row.get("starter_code") or "")
    if starter.strip():
        prompt += (
            f"\n\nStarter code:\n{starter.strip()}\n\nRead the arguments from standard "
            "input, one per line, and print the result."
        )
    return CodeRequest(
        id=str(task),
        kind="program",
        prompt=prompt,
        examples=_io_examples(row.get("sample_io") or [], "sample_io"),
        reference_examples=_io_examples(row["test_list"], "test_list"),
        starter_code=starter,
        metadata={"difficulty": row["difficulty"]} if "difficulty" in row else {},
    )


def request_from_row(row: Any) -> CodeRequest:
    """A ladder row as a request: its given tests are the visible ones, its
    `test` the hidden ones; an APPS row (with `description` and `test_list`) is
    a program request. Raises ValueError (or ValidationError) on a bad row."""
    if not isinstance(row, dict):
        raise ValueError(f"a row must be a JSON object, got {type(row).__name__}")
    if "description" in row and "test_list" in row:
        return apps_request(row)
    missing = [key for key in ("task_id", "prompt", "entry_point") if key not in row]
    if missing:
        raise ValueError(f"row lacks {', '.join(missing)}")
    given = row.get("given_tests") or []
    if not isinstance(given, list) or not all(isinstance(t, str) for t in given):
        raise ValueError("given_tests must be a list of strings")
    return CodeRequest(
        id=str(row["task_id"]),
        prompt=row["prompt"],
        entry_point=row["entry_point"],
        visible_tests=given,
        reference_tests=row.get("test"),
    )


def ladder_requests(path: Path) -> tuple[list[CodeRequest], list[DeadLetter]]:
    """The requests of a ladder file, and a dead letter for each row that is not
    one (bad JSON, a missing field, a repeated task id)."""
    requests: list[CodeRequest] = []
    dead: list[DeadLetter] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            source = f"{path.name}:{number}"
            try:
                request = request_from_row(json.loads(line))
            except json.JSONDecodeError as error:
                dead.append(DeadLetter(reason=f"not JSON: {error}", error_type="JSONDecodeError",
                                       raw=line.rstrip("\n"), source=source))  # fmt: skip
                continue
            except (ValueError, ValidationError) as error:
                reason = _first_error(error) if isinstance(error, ValidationError) else str(error)
                dead.append(DeadLetter(reason=reason, error_type=type(error).__name__,
                                       raw=line.rstrip("\n"), source=source))  # fmt: skip
                continue
            if request.id in seen:
                dead.append(DeadLetter(reason=f"task {request.id!r} repeated",
                                       error_type="DuplicateTask", raw=line.rstrip("\n"),
                                       source=source))  # fmt: skip
                continue
            seen.add(request.id)
            requests.append(request)
    return requests, dead


def parse_price(value: str) -> tuple[float, float]:
    """`IN/OUT`, USD per 1M tokens."""
    try:
        price_in, price_out = (float(part) for part in value.split("/"))
    except ValueError:
        raise ValueError(f"price {value!r} is not PRICE_IN/PRICE_OUT (USD per 1M tokens)") from None
    if price_in < 0 or price_out < 0:
        raise ValueError(f"price {value!r} is negative")
    return price_in, price_out


def recorded_requests(
    directory: Path, spec: LadderSpec
) -> tuple[list[CodeRequest], list[DeadLetter]]:
    """The ladder's requests that every model has a recording for; the rest, and
    every row that is not a request, as dead letters with the reason."""
    from streamcascade.backends.replay import LadderReplayBackend

    path = problems_file(directory, spec)
    if not path.is_file():
        raise ValueError(f"{directory}: problems file {path.name} not found")
    requests, dead = ladder_requests(path)
    backends = [
        LadderReplayBackend(directory / model.filename, model.name) for model in spec.models
    ]
    kept = []
    for request in requests:
        missing = [b for b in backends if not b.has(request.id)]
        if missing:
            why = "; ".join(b.why_missing(request.id) for b in missing)
            dead.append(
                DeadLetter(reason=why, error_type="UnknownTaskError",
                           raw=request.model_dump_json(), source=path.name)
            )  # fmt: skip
            continue
        kept.append(request)
    return kept, dead
