"""Kafka record values to requests and feedback, and the reason when they are not."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from streamcascade.schemas import CodeRequest, Feedback
from streamcascade.tasks import check_request, installed_task_kinds

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Rejected:
    """Why a record cannot be processed; it goes to the dead letters as it came."""

    reason: str
    error_type: str


def _validation_reason(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<record>'}: {e['msg']}" for e in error.errors()
    )[:2000]


def _parse(raw: bytes | None, model: type[M], max_bytes: int) -> M | Rejected:
    if raw is None:
        return Rejected("empty record (no value)", "EmptyRecord")
    if len(raw) > max_bytes:
        return Rejected(f"record of {len(raw)} bytes exceeds the limit of {max_bytes}", "TooLarge")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return Rejected(f"not UTF-8: {error}", "NotUtf8")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        return Rejected(f"not JSON: {error}"[:2000], "NotJson")
    if not isinstance(data, dict):
        return Rejected(f"not a JSON object but {type(data).__name__}", "WrongSchema")
    if model is CodeRequest and data.get("language", "python") != "python":
        language = str(data.get("language"))[:100]
        return Rejected(f"unsupported language {language!r} (supported: python)", "Unsupported")
    try:
        parsed = model.model_validate(data)
    except ValidationError as error:
        return Rejected(_validation_reason(error), "WrongSchema")
    except (RecursionError, ValueError, TypeError) as error:
        return Rejected(f"invalid: {error}"[:2000], "WrongSchema")
    if isinstance(parsed, CodeRequest):
        # What the request's kind asks of it (an entry point, label_set, ...).
        if parsed.kind not in installed_task_kinds():
            known = ", ".join(installed_task_kinds())
            return Rejected(f"unknown task kind {parsed.kind!r} (installed: {known})",
                            "Unsupported")  # fmt: skip
        try:
            check_request(parsed)
        except ValueError as error:
            return Rejected(str(error)[:2000], "WrongSchema")
    return parsed


def parse_request(raw: bytes | None, max_bytes: int) -> CodeRequest | Rejected:
    return _parse(raw, CodeRequest, max_bytes)


def parse_feedback(raw: bytes | None, max_bytes: int) -> Feedback | Rejected:
    return _parse(raw, Feedback, max_bytes)
