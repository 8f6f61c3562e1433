"""run (a stream through the cascade), state (learner snapshots), explain, models."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from streamcascade.cli.common import (
    connector,
    open_source,
    positive_int,
    read_lines,
    read_records,
    show_progress,
)
from streamcascade.config import load_config
from streamcascade.errors import InputError
from streamcascade.schemas import CodeRequest, DeadLetter

log = logging.getLogger("streamcascade")


def cmd_run(args: argparse.Namespace) -> int:
    from streamcascade.cascade.build import build_engine
    from streamcascade.learning.snapshots import SnapshotStore
    from streamcascade.metrics import RunSummary, format_table
    from streamcascade.preflight import check_backends
    from streamcascade.sandbox import Sandbox
    from streamcascade.tasks import grade_answer

    config = load_config(Path(args.config) if args.config else None)
    # Everything the user named is checked before a sandbox opens or a model
    # loads: the connectors check their own locations as they open.
    source = open_source(args)
    dead_path = Path(args.dead_letters) if args.dead_letters else None
    if dead_path is None and args.out:
        # Beside the answers, not on stderr among the logs.
        out = Path(args.out)
        dead_path = out.with_name(f"{out.stem}.dead-letters.jsonl")
    if args.state_dir and Path(args.state_dir).exists() and not Path(args.state_dir).is_dir():
        raise InputError(f"--state-dir {args.state_dir} is a file, not a directory")
    check_backends(config)
    # Opened last: a sink makes its file or directory, which a failed check
    # above would otherwise leave behind empty.
    sinks = "streamcascade.sinks"
    answers_out = connector(sinks, args.sink)(args.out, None, "--out")
    dead_out = connector(sinks, "jsonl")(
        str(dead_path) if dead_path is not None else None, sys.stderr, "--dead-letters"
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

        records = read_records(args, source)
        for record in show_progress(records, "requests", not args.no_progress, total):
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


def cmd_explain(args: argparse.Namespace) -> int:
    from streamcascade.explain import explain
    from streamcascade.preflight import check_input_file
    from streamcascade.schemas import CascadeAnswer

    if args.answers:
        check_input_file(Path(args.answers), "--answers")
    found = None
    for line in read_lines(Path(args.answers) if args.answers else None):
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


def add_commands(sub: Any) -> None:
    """run, state, explain and models."""
    run = sub.add_parser("run", help="stream requests through the cascade, one JSON answer each")
    run.add_argument("--config", help="YAML config (default: the embedded configs/default.yaml)")
    run.add_argument(
        "--input",
        help="where the source reads: a JSONL file of CodeRequests, or a directory with "
        "--source directory (default: the bundled HumanEval)",
    )
    run.add_argument(
        "--source",
        help="an installed source (entry points streamcascade.sources: jsonl, humaneval, "
        "directory, ...; default: jsonl with --input, else humaneval)",
    )
    run.add_argument(
        "--sink",
        default="jsonl",
        help="an installed sink for the answers (streamcascade.sinks: jsonl, directory, ...; "
        "default jsonl: --out FILE, or stdout)",
    )
    run.add_argument("--limit", type=positive_int, help="stop after N requests")
    run.add_argument(
        "--batch-size",
        type=positive_int,
        default=8,
        help="requests answered together: each level step is one backend call for all of "
        "them (default 8; a learning cascade learns between batches)",
    )
    run.add_argument(
        "--out", help="where the sink writes: append answers to this file (default: stdout)"
    )
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
