"""The Dockerfile's steps as a plain shell script, for machines with no Docker
engine (this project's, and CI's): `python3 docker/shell_steps.py WORK_DIR`
prints a bash script that builds and runs what the image would, under
WORK_DIR, so the Dockerfile cannot rot unnoticed (tests/test_docker.py runs it).

How each instruction maps:

- `FROM`: a new stage, with its own root directory `WORK_DIR/<stage>` and a
  fresh virtual environment standing in for the base image's Python (whose
  `pip` and `python` come first on PATH).
- `WORKDIR`, `COPY` (from the build context, or `--from=` an earlier stage),
  `ENV`: the same, with absolute paths moved under the stage's root.
- `RUN`: run by bash in the stage's working dir, absolute paths moved the same
  way. `apt-get` steps only check that the packages they install are present
  here (there is no root filesystem of our own to install into), and pip's
  `--no-cache-dir` is dropped so that the wheel compiled for the test suite's
  install is reused instead of compiled again (minutes on 2 cores).
- `ENTRYPOINT` + `CMD`: run last, as `docker run IMAGE` would.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    result = []
    for line in lines:
        instruction, _, arguments = line.partition(" ")
        result.append((instruction.upper(), arguments.strip()))
    return result


def _paths(root: str, text: str, absolute: list[str]) -> str:
    """Move the image's absolute paths under the stage's root."""
    for path in sorted(absolute, key=len, reverse=True):
        text = re.sub(rf"(?<![\w/.-]){re.escape(path)}(?=[/\s\"']|$)", root + path, text)
    return text


def _packages_present(command: str) -> list[str]:
    """apt-get install's packages, as checks that they are on this machine."""
    match = re.search(r"apt-get install[^&;]*", command)
    if match is None:
        return []
    names = [w for w in match.group(0).split()[2:] if not w.startswith("-")]
    return [f"dpkg -s {shlex.quote(name)} >/dev/null  # apt-get install {name}" for name in names]


def shell_script(dockerfile: Path, work: Path, volumes: dict[str, Path] | None = None) -> str:
    """The script; `volumes` maps an image path to a directory here (as
    `docker run -v` would), e.g. the model cache, so models are not fetched again."""
    steps = _instructions(dockerfile.read_text())
    # Every absolute path the image names, moved under each stage's root.
    absolute = sorted(
        {m for _, args in steps for m in re.findall(r"(?<![\w.-])/(?:[a-z]+)", args)}
        - {"/bin", "/usr", "/var", "/lib", "/etc", "/tmp", "/dev", "/proc"}
    )
    out = ["#!/usr/bin/env bash", "set -euo pipefail", f"CONTEXT={shlex.quote(str(ROOT))}"]
    stages: dict[str, str] = {}
    root = ""
    entrypoint: list[str] = []
    command: list[str] = []
    for instruction, args in steps:
        if instruction == "FROM":
            name = args.split(" AS ")[-1].strip() if " AS " in args else f"stage{len(stages)}"
            root = str(work / name)
            stages[name] = root
            out += [
                f"# FROM {args}",
                f"rm -rf {root} && mkdir -p {root}",
                f"python3 -m venv {root}/python",
                f"export PATH={root}/python/bin:/usr/bin:/bin; cd {root}",
            ]
            for inside, here in (volumes or {}).items():
                out.append(f"mkdir -p $(dirname {root}{inside}) && ln -sfn {here} {root}{inside}")
        elif instruction == "WORKDIR":
            out.append(f"mkdir -p {root}{args} && cd {root}{args}")
        elif instruction == "ENV":
            for name, value in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', args):
                out.append(f"export {name}={_paths(root, value, absolute)}")
        elif instruction == "COPY":
            words = shlex.split(args)
            source_root = "$CONTEXT"
            if words[0].startswith("--from="):
                source_root = stages[words[0].removeprefix("--from=")]
                words = words[1:]
            *sources, destination = words
            target = _paths(root, destination, absolute)
            into_dir = destination.endswith("/") or len(sources) > 1
            out.append(f"mkdir -p {target if into_dir else target.rsplit('/', 1)[0] or '/'}")
            for source in sources:
                origin = f"{source_root}/{source.lstrip('/')}"
                # Docker copies a directory's contents, not the directory.
                out.append(
                    f"if [ -d {origin} ]; then mkdir -p {target} && cp -rT {origin} {target}; "
                    f"else cp {origin} {target}{'/' if into_dir else ''}; fi"
                )
        elif instruction == "RUN":
            if "apt-get" in args:
                out += _packages_present(args)
                continue
            run = _paths(root, args, absolute).replace("--no-cache-dir", "")
            out.append(run)
        elif instruction == "ENTRYPOINT":
            entrypoint = json.loads(args)
        elif instruction == "CMD":
            command = json.loads(args)
    out.append("# docker run IMAGE")
    out.append(" ".join(shlex.quote(w) for w in entrypoint + command))
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python3 docker/shell_steps.py WORK_DIR [IMAGE_PATH=HOST_DIR ...]")
    mounts = dict(arg.split("=", 1) for arg in sys.argv[2:])
    sys.stdout.write(shell_script(
        ROOT / "docker" / "Dockerfile", Path(sys.argv[1]).resolve(),
        {inside: Path(here).resolve() for inside, here in mounts.items()},
    ))  # fmt: skip
