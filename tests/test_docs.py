"""The docs build strictly, the configuration reference holds every field, and
the README stays the short front door whose test command is CI's."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from streamcascade.config import AppConfig
from streamcascade.configdoc import reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def _models(model: type[BaseModel], seen: list[type[BaseModel]]) -> list[type[BaseModel]]:
    if model not in seen:
        seen.append(model)
        for field in model.model_fields.values():
            for candidate in [field.annotation, *getattr(field.annotation, "__args__", ())]:
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    _models(candidate, seen)
    return seen


def test_the_docs_build_strictly_with_every_config_field(tmp_path: Path) -> None:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    page = (tmp_path / "configuration" / "index.html").read_text()
    for model in _models(AppConfig, []):
        for name in model.model_fields:
            assert f"<code>{name}</code>" in page, (model.__name__, name)
    assert "<code>base_url</code>" in page  # a backend kind's own field


def test_the_reference_is_written_from_the_models() -> None:
    sections = {part.split("\n", 1)[0]: part for part in reference_markdown().split("### ")}
    for model in _models(AppConfig, []):
        section = sections[model.__name__]
        for name, field in model.model_fields.items():
            row = next(line for line in section.splitlines() if line.startswith(f"| `{name}` |"))
            if field.description:
                assert " ".join(field.description.split())[:40] in row.replace("\\|", "|")


def test_the_readme_is_the_front_door() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    commands = re.findall(r"```sh\n(.*?)\n```", readme, flags=re.S)
    first, test = commands[0], commands[1]
    assert "\n" not in first and "\n" not in test
    assert first.endswith("streamcascade run --limit 3")
    # .ci/run is the README's test command, step by step
    steps = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if line and not line.startswith(("#", "set ", "cd "))]  # fmt: skip
    assert " && ".join(steps) == test
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).is_file(), link
