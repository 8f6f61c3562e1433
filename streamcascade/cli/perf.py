"""perf: speed benchmarks (sandbox, backend, service, engine, backend faults)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from streamcascade.cli.common import interrupt_on_sigterm
from streamcascade.config import load_config


def cmd_perf(args: argparse.Namespace) -> int:
    from streamcascade.benchtools import perf

    interrupt_on_sigterm()  # the servers it starts are stopped on the way out

    if args.what == "sandbox":
        print(perf.sandbox_throughput().table())
    elif args.what == "engine":
        from streamcascade.benchtools.engine_perf import engine_concurrency

        n = args.requests or 64
        print(engine_concurrency(n, args.slots, args.delay_s).table())
    elif args.what == "backend-faults":
        import tempfile

        from streamcascade.benchtools.engine_perf import backend_fault_run

        logging.getLogger("kafka").setLevel(logging.ERROR)
        n = args.requests or 160
        with tempfile.TemporaryDirectory(prefix="streamcascade-backend-faults-") as work:
            report = backend_fault_run(Path(work), n)
        print(report.table())
        return 0 if report.n_lost == 0 else 1
    elif args.what == "service":
        from streamcascade.benchtools.throughput import service_throughput

        logging.getLogger("kafka").setLevel(logging.WARNING)
        print(service_throughput(n_requests=args.requests or 20_000).table())
    else:
        from streamcascade.models import resolve_model

        config = load_config(Path(args.config) if args.config else None)
        path = resolve_model(args.model, config.model_cache_dir, config.allow_hub_download)
        print(perf.backend_overhead(path, args.model, runs=args.runs).table())
    return 0


def add_commands(sub: Any) -> None:
    """perf."""
    perf = sub.add_parser(
        "perf", help="speed benchmarks: sandbox, backend overhead, service throughput"
    )
    perf.add_argument("what", choices=["sandbox", "backend", "service", "engine", "backend-faults"])
    perf.add_argument("--slots", type=int, default=8, help="engine: the endpoint's parallel slots")
    perf.add_argument("--delay-s", type=float, default=1.0, help="engine: seconds per call")
    perf.add_argument(
        "--requests",
        type=int,
        help="stream length (service 20000, engine 64, backend-faults 160)",
    )
    perf.add_argument("--model", default="qwen2.5-coder-0.5b-instruct-q4_k_m")
    perf.add_argument("--runs", type=int, default=5)
    perf.add_argument("--config", help="YAML config (for the cache dir)")
    perf.set_defaults(func=cmd_perf)
