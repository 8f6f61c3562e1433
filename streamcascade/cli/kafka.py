"""The Kafka commands: serve (the service), feed, follow, faults, kafka (a local broker)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from streamcascade.cli.common import (
    connector,
    interrupt_on_sigterm,
    kafka_arguments,
    kafka_config,
    positive_float,
    positive_int,
)
from streamcascade.errors import InputError, Unavailable


def cmd_serve(args: argparse.Namespace) -> int:
    import signal

    from streamcascade.backends.guard import breaker_states
    from streamcascade.cascade.build import build_engine
    from streamcascade.learning.snapshots import SnapshotMismatch
    from streamcascade.preflight import check_address, check_backends, check_broker
    from streamcascade.sandbox import Sandbox
    from streamcascade.service.observe import Health, ObserveServer, ServiceMetrics
    from streamcascade.service.worker import CascadeService

    config = kafka_config(args)
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

    config = kafka_config(args)
    if args.input:
        check_input_file(Path(args.input))
    check_broker(config.kafka.bootstrap_servers)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    if args.input:
        with Path(args.input).open("rb") as handle:
            values = [line.rstrip(b"\r\n") for line in handle if line.strip()]
    else:
        source = connector("streamcascade.sources", "humaneval")(None, args.limit)
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

    config = kafka_config(args)
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


def cmd_faults(args: argparse.Namespace) -> int:
    import tempfile

    from streamcascade.benchtools.faults import HEADER, fault_table

    logging.getLogger("kafka").setLevel(logging.ERROR)
    interrupt_on_sigterm()  # brokers and services are stopped on the way out
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


def add_commands(sub: Any) -> None:
    """serve, feed, follow, faults and kafka."""
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
    feed_parser.add_argument("--limit", type=positive_int, help="first N records only")
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
    faults.add_argument("--restarts", type=positive_int, default=20,
                        help="broker-restarts: times the broker is restarted")  # fmt: skip
    faults.add_argument("--max-down-s", type=float, default=30.0,
                        help="broker-restarts: longest down-time (uniform from 0)")  # fmt: skip
    faults.add_argument("--seed", type=int, default=0,
                        help="the first run's random seed (each run after it: +1)")  # fmt: skip
    faults.add_argument("--repeat", type=positive_int, default=1,
                        help="run each scenario and delivery this many times in a row")  # fmt: skip
    faults.add_argument("--dir", help="work dir (default: a new temp dir)")
    faults.add_argument(
        "--soak-s", type=positive_float, default=None,
        help="instead: serve this long at --rate with hostile programs and malformed records "
        "mixed in; report lost requests, RSS growth and leftovers (run nothing else meanwhile)",
    )  # fmt: skip
    faults.add_argument("--rate", type=positive_float, default=1.0, help="soak: records per s")
    faults.set_defaults(func=cmd_faults)

    kafka = sub.add_parser("kafka", help="run a local Apache Kafka (KRaft) on 127.0.0.1")
    kafka.add_argument("--dir", default="kafka-data", help="its data and logs")
    kafka.add_argument("--port", type=int, default=9092)
    kafka.add_argument("--heap-mb", type=int, default=512)
    kafka.set_defaults(func=cmd_kafka)
