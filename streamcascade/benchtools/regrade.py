"""Re-grade every recorded answer of some ladders, to check that a change to the
sandbox left every verdict as it was.

`python -m streamcascade.benchtools.regrade --out after.json LADDER=MODELS ...`
steps each level of each ladder over its recorded answers (the level's own
tests: the pass bit a fixed rule sees) and grades each answer on the hidden
tests, then writes both per answer, with how many of the ladder's hidden tests
the sandbox judges in the parent (`verdicts.plan_test`). `--compare
before.json after.json` lists every verdict that changed. Run it on the code
before a change (a worktree on `PYTHONPATH`) and after.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from streamcascade.benchtools.learnbench import LadderWorld
from streamcascade.config import SandboxConfig
from streamcascade.evaluation import reference_test
from streamcascade.ladder import ladder_config, parse_ladder_spec, recorded_requests
from streamcascade.sandbox import Sandbox
from streamcascade.sandbox.verdicts import plan_test


def regrade(directory: Path, models: str, limit: int | None = None) -> dict[str, Any]:
    spec = parse_ladder_spec(models)
    config = ladder_config(directory, spec)
    requests, _ = recorded_requests(directory, spec)
    requests = requests[:limit]
    probe = SandboxConfig(per_test_timeout_s=1.0, max_timeouts=1)
    with Sandbox(probe) as sandbox, Sandbox(SandboxConfig(per_test_timeout_s=10.0)) as grader:
        world = LadderWorld(config, requests, sandbox, grader)
    tests = [t for t in (reference_test(r) for r in requests) if t is not None]
    return {
        "levels": [level.name for level in world.levels],
        "correct": world.correct,
        "passes": world.passes,
        "hidden_tests": len(tests),
        "hidden_tests_split": sum(plan_test(t) is not None for t in tests),
    }


def compare(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """One line per ladder and level: how many verdicts changed, and which."""
    lines = []
    for ladder, old in before.items():
        new = after.get(ladder)
        if new is None:
            lines.append(f"{ladder}: missing after")
            continue
        for what in ("correct", "passes"):
            for name, x, y in zip(old["levels"], old[what], new[what], strict=True):
                changed = sorted(k for k in x if x[k] != y.get(k))
                lines.append(
                    f"{ladder} {name} {what}: {len(x)} answers, "
                    + (f"{len(changed)} changed: {', '.join(changed[:8])}" if changed else "same")
                )
        lines.append(
            f"{ladder}: hidden tests split (judged in the parent from values) "
            f"{old['hidden_tests_split']} -> {new['hidden_tests_split']} of "
            f"{new['hidden_tests']}; the rest judged apart"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ladders", nargs="*", metavar="DIR=MODELS",
                        help="a ladder directory and its --models spec (a YAML file)")  # fmt: skip
    parser.add_argument("--out", type=Path, help="where the verdicts go (JSON)")
    parser.add_argument("--limit", type=int, default=None, help="first N tasks of each")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args(argv)
    try:
        if args.compare:
            before, after = (json.loads(p.read_text()) for p in args.compare)
            sys.stdout.write("\n".join(compare(before, after)) + "\n")
            return 0
        if not args.ladders or args.out is None:
            parser.error("give DIR=MODELS pairs and --out, or --compare BEFORE AFTER")
        started = time.perf_counter()
        payload = {}
        for pair in args.ladders:
            directory, _, models = pair.partition("=")
            if not models:
                parser.error(f"{pair}: expected DIR=MODELS")
            payload[Path(directory).name] = regrade(Path(directory), models, args.limit)
        args.out.write_text(json.dumps(payload))
    except (OSError, ValueError, KeyError) as error:  # missing files, bad JSON: one line
        parser.error(str(error))
    sys.stdout.write(f"wrote {args.out} in {time.perf_counter() - started:.0f} s\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
