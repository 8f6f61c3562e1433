"""MkDocs hook: the configuration page's reference is written from the pydantic
models at build time (`streamcascade.configdoc`), so it cannot drift."""

from __future__ import annotations

from typing import Any

MARKER = "<!-- configuration reference -->"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if MARKER not in markdown:
        return markdown
    from streamcascade.configdoc import reference_markdown

    return markdown.replace(MARKER, reference_markdown())
