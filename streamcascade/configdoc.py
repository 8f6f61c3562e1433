"""The configuration reference, written from the pydantic models themselves.

The docs' reference page is this module's output (a MkDocs hook calls it at
build time), so a field added, renamed or re-described in `config.py`, or in a
backend kind's own settings model, is in the docs the next time they build:
the reference cannot drift from the code.

Examples
--------
>>> from streamcascade.config import SandboxConfig
>>> print(model_table(SandboxConfig).splitlines()[0])
| field | type | default | description |
>>> "per_test_timeout_s" in model_table(SandboxConfig)
True
>>> "| `kind` |" in reference_markdown()  # the backend kinds' own fields too
True
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from streamcascade.backends.registry import installed_kinds, plugin
from streamcascade.config import AppConfig

__all__ = ["model_table", "reference_markdown"]


def _type_name(annotation: Any) -> str:
    """A field's type as a reader writes it in YAML terms, not Python's repr."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin in (list, tuple, set, frozenset):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}" if args else "mapping"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean",
                "Path": "path"}.get(annotation.__name__, annotation.__name__)  # fmt: skip
    return re.sub(r"typing\.|streamcascade\.\w+\.", "", str(annotation))


def _default(field: Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default if field.default_factory is None else field.default_factory()
    if isinstance(value, BaseModel):
        return "(see its section)"
    return f"`{value!r}`" if value is not None else "`null`"


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def model_table(model: type[BaseModel]) -> str:
    """One model's fields as a Markdown table: name, type, default, description."""
    rows = ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        description = field.description or ""
        rows.append(
            f"| `{name}` | {_type_name(field.annotation)} | {_cell(_default(field))} "
            f"| {_cell(description)} |"
        )
    return "\n".join(rows)


def _models(root: type[BaseModel]) -> Iterator[type[BaseModel]]:
    """`root` and every model reachable from its fields, each once, in order."""
    seen: list[type[BaseModel]] = []
    queue = [root]
    while queue:
        model = queue.pop(0)
        if model in seen:
            continue
        seen.append(model)
        for field in model.model_fields.values():
            queue.extend(_nested(field.annotation))
    yield from seen


def _nested(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _nested(arg)]


def reference_markdown() -> str:
    """Every section of the config (`AppConfig` down), then each installed
    backend kind's settings, as Markdown."""
    parts = []
    for model in _models(AppConfig):
        doc = (model.__doc__ or "").strip().split("\n\n")[0]
        parts.append(f"### {model.__name__}\n\n{' '.join(doc.split())}\n\n{model_table(model)}")
    parts.append(
        "## Backend kinds\n\nA level's `backend` is a mapping with `kind`: one of the "
        "installed kinds below (entry point group `streamcascade.backends`), with that "
        "kind's own fields."
    )
    for kind in installed_kinds():
        try:
            model = plugin(kind).config_model
        except Exception as error:  # an installed kind that cannot load: say so, go on
            parts.append(f"### `{kind}`\n\nCould not be loaded here: {error}")
            continue
        doc = (model.__doc__ or "").strip().split("\n\n")[0]
        parts.append(f"### `{kind}`\n\n{' '.join(doc.split())}\n\n{model_table(model)}")
    return "\n\n".join(parts) + "\n"
