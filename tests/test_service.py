"""The Kafka service on a real Apache Kafka broker (KRaft, one node on 127.0.0.1,
started by the project's own files), with the real sandbox and the replay
backend on recordings written here."""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kafka import OffsetAndMetadata

from streamcascade.benchtools.faults import replay_config as shared_replay_config
from streamcascade.benchtools.faults import request_value
from streamcascade.cascade.build import build_engine
from streamcascade.config import AppConfig, KafkaConfig
from streamcascade.sandbox import Sandbox
from streamcascade.schemas import CascadeAnswer, CodeRequest
from streamcascade.service.broker import LocalKafka
from streamcascade.service.delivery import BatchFailed, ExactlyOnce, Output
from streamcascade.service.tools import feed, follow
from streamcascade.service.worker import (
    CascadeService,
    Engine,
    ServiceStats,
    _Rebalances,
    close_at_once,
    ensure_topics,
    read_latest_state,
    release_parked_records,
)


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    with LocalKafka(tmp_path_factory.mktemp("kafka"), partitions=2) as broker:
        yield broker


def request_json(i: int) -> bytes:
    return request_value(i, with_reference=True)


def replay_config(tmp_path: Path, broker: LocalKafka, n_tasks: int, **kafka: object) -> AppConfig:
    """The fault runs' replay cascade (see `faults.replay_config`), in-process."""
    settings: dict[str, object] = {"instance_id": "i0", "partitions": 2, **kafka}
    return AppConfig.model_validate(
        shared_replay_config(tmp_path, broker.bootstrap_servers, n_tasks, **settings)
    )


@contextlib.contextmanager
def running(config: AppConfig, sandbox: Sandbox, learn: bool = False) -> Iterator[CascadeService]:
    """The service in a thread; on exit it is stopped as SIGTERM would stop it."""
    built = build_engine(config, sandbox, learn)
    service = CascadeService(config.kafka, built.engine, built.learner)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            service.run()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield service
    finally:
        service.stop()
        thread.join(60)
    assert not thread.is_alive(), "the service did not stop"
    assert not errors, errors


def wait_for(
    condition: Callable[[], bool], timeout_s: float = 120.0, about: Callable[[], object] = str
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out: {about()}"
        time.sleep(0.05)


def serve_until(
    config: AppConfig, sandbox: Sandbox, done: Callable[[ServiceStats], bool], learn: bool = False
) -> ServiceStats:
    with running(config, sandbox, learn) as service:
        wait_for(lambda: done(service.stats))
    return service.stats


BAD = [
    b"not json at all",
    b"\xff\xfe\x00 not utf-8",
    b"[1, 2, 3]",
    b'{"id": "x"}',
    b'{"id": "lang", "prompt": "p", "entry_point": "f", "language": "cobol"}',
    b'{"id": "big", "prompt": "' + b"a" * 5000 + b'", "entry_point": "f"}',
    b"",
]


def test_answers_every_request_and_dead_letters_bad_input(
    kafka: LocalKafka, tmp_path: Path, sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="streamcascade.service.worker")
    n = 30
    config = replay_config(tmp_path, kafka, n, max_request_bytes=4000, max_in_flight=8)
    values = [request_json(i) for i in range(n)]
    mixed = [*values[:10], *BAD, *values[10:]]
    ensure_topics(config.kafka)
    topics = config.kafka.topics
    feed(config.kafka, mixed)
    stats = serve_until(config, sandbox, lambda s: s.n_answers >= n and s.n_dead_letters >= 7)
    answers = [
        json.loads(r.value or b"") for r in follow(config.kafka, topics.answers, idle_timeout_s=3)
    ]
    assert sorted(a["id"] for a in answers) == sorted(f"t{i}" for i in range(n))
    # Every third task: the small level's answer passes the visible test but is
    # wrong; the fixed cascade accepts it (learning is another test).
    assert {a["level"] for a in answers} == {1}
    dead = list(follow(config.kafka, topics.deadletter, idle_timeout_s=3))
    assert sorted(d.value or b"" for d in dead) == sorted(BAD)
    reasons = {d.value: d.headers["reason"].decode() for d in dead}
    assert "not JSON" in reasons[b"not json at all"]
    assert "not UTF-8" in reasons[b"\xff\xfe\x00 not utf-8"]
    assert "unsupported language 'cobol'" in reasons[BAD[4]]
    assert "exceeds the limit" in reasons[BAD[5]]
    assert all(d.headers["source_topic"].decode() == topics.requests for d in dead)
    assert stats.n_answers == n and stats.n_dead_letters == len(BAD)
    # One log line per batch says what it did: together they account for every record.
    batches = [r.getMessage() for r in caplog.records if r.getMessage().startswith("batch of ")]
    assert sum(int(line.split()[2]) for line in batches) == n + len(BAD)
    assert sum(int(line.split(":")[1].split()[0]) for line in batches) == n


@pytest.mark.parametrize("policy", ["hedge", "router"])
def test_exactly_once_learns_from_feedback_and_snapshots_its_state(
    kafka: LocalKafka, tmp_path: Path, sandbox: Sandbox, policy: str
) -> None:
    n = 40
    config = replay_config(
        tmp_path, kafka, n, delivery="exactly_once", snapshot_every=10, max_in_flight=5
    )
    config = config.model_copy(
        update={"learning": config.learning.model_copy(update={"policy": policy})}
    )
    ensure_topics(config.kafka)
    topics = config.kafka.topics
    feed(config.kafka, [request_json(i) for i in range(n)])
    with running(config, sandbox, learn=True) as service:
        wait_for(lambda: service.stats.n_answers >= n)
        # Downstream CI says the small level's answers to t0, t3, t6 were wrong.
        feedback = [json.dumps({"id": f"t{i}", "passed": False, "source": "ci"}).encode()
                    for i in (0, 3, 6)]  # fmt: skip
        feed(config.kafka, [*feedback, b"{not feedback"], topics.feedback)
        wait_for(lambda: service.stats.n_feedback >= 4)
    stats = service.stats
    answers = [
        json.loads(r.value or b"") for r in follow(config.kafka, topics.answers, idle_timeout_s=3)
    ]
    ids = [a["id"] for a in answers]
    assert len(ids) == len(set(ids)) == n  # read_committed: each answer once
    assert stats.n_dead_letters == 1
    if policy == "hedge":
        # Feedback teaches the policy of the level that published, below the top.
        level_of = {a["id"]: a["level"] for a in answers}
        below_top = sum(level_of[f"t{i}"] < 2 for i in (0, 3, 6))
        assert below_top and stats.n_feedback_learned == below_top
    else:
        # The router's estimators learn the quality of whichever level published.
        assert stats.n_feedback_learned == 3
    assert stats.n_snapshots >= 4
    snapshot = read_latest_state(config.kafka)
    assert snapshot is not None and snapshot["state"]["counters"]["n_requests"] == n
    assert snapshot["state"]["counters"]["n_feedback"] == 3
    # A new instance starts from it.
    with running(config, sandbox, learn=True) as again:
        wait_for(lambda: again.stats.restored_from is not None, 30)
    assert again.stats.restored_from == n


def test_feedback_from_the_broker_teaches_the_cheap_learner_that_answered(
    kafka: LocalKafka, tmp_path: Path, sandbox: Sandbox
) -> None:
    """A label stream through `serve` on a real broker: the river level learns
    the top's labels, answers what it is sure of, and Feedback on one of its
    answers, read from the feedback topic, teaches it, with no policy learning."""
    from test_cheap_learner import _stream, _write

    requests = _stream(400)
    stream = _write(requests, tmp_path / "labels.jsonl")
    config = replay_config(tmp_path, kafka, 1, max_in_flight=8)
    levels = [
        {"name": "cheap", "backend": {"kind": "river", "min_support": 10}, "threshold": 0.9,
         "t_test_generations": 0},
        {"name": "top", "backend": {"kind": "replay", "format": "ladder", "path": str(stream)},
         "threshold": 0.0, "t_test_generations": 0, "price_in_usd_per_1m": 10.0},
    ]  # fmt: skip
    config = AppConfig.model_validate({**config.model_dump(mode="json"), "levels": levels})
    ensure_topics(config.kafka)
    topics = config.kafka.topics
    feed(config.kafka, [r.model_dump_json().encode() for r in requests])
    with running(config, sandbox) as service:
        wait_for(lambda: service.stats.n_answers >= len(requests))
        answers = [json.loads(r.value or b"")
                   for r in follow(config.kafka, topics.answers, idle_timeout_s=3)]  # fmt: skip
        own = [a for a in answers if a["level"] == 1]
        assert own, "the cheap level answered nothing of 400"
        river = service.engine.levels[0].backend.backend()  # type: ignore[attr-defined]
        n_learned = river.labeler.n_learned
        feedback = json.dumps({"id": own[-1]["id"], "passed": True, "source": "ci"}).encode()
        feed(config.kafka, [feedback], topics.feedback)
        wait_for(lambda: service.stats.n_feedback >= 1)
        wait_for(lambda: river.labeler.n_learned == n_learned + 1, 30)
    assert service.stats.n_feedback_learned == 1


# -- bad input, generated -------------------------------------------------------------

_GOOD = json.loads(request_json(0))


def _bad_messages() -> st.SearchStrategy[bytes]:
    """Records that are bad by construction, each for a reason the service names."""
    not_utf8 = st.binary(max_size=300).map(lambda b: b"\xff" + b)
    not_object = st.one_of(
        st.integers(), st.floats(allow_nan=False), st.text(max_size=50), st.booleans(), st.none(),
        st.lists(st.integers(), max_size=5),
    ).map(lambda v: json.dumps(v).encode())  # fmt: skip
    truncated = st.integers(0, len(request_json(0)) - 1).map(lambda n: request_json(0)[:n])
    missing = st.dictionaries(
        st.text(max_size=10).filter(lambda k: k not in {"prompt", "entry_point"}),
        st.one_of(st.text(max_size=20), st.integers()),
        max_size=5,
    ).map(lambda d: json.dumps(d).encode())
    language = (
        st.text(min_size=1, max_size=20)
        .filter(lambda t: t != "python")
        .map(lambda lang: json.dumps({**_GOOD, "language": lang}).encode())
    )
    wrong_type = st.sampled_from(["id", "prompt", "visible_tests", "entry_point"]).flatmap(
        lambda key: st.one_of(st.integers(), st.lists(st.integers(), min_size=1)).map(
            lambda value: json.dumps({**_GOOD, key: value}).encode()
        )
    )
    bad_entry = st.from_regex(r"[0-9 \-][a-z0-9 ]{0,10}", fullmatch=True).map(
        lambda name: json.dumps({**_GOOD, "entry_point": name}).encode()
    )
    oversized = st.integers(4001, 6000).map(
        lambda n: json.dumps({**_GOOD, "prompt": "x" * n}).encode()
    )
    return st.one_of(
        not_utf8, not_object, truncated, missing, language, wrong_type, bad_entry, oversized
    )


# The service's Kafka clients use the random module in their own threads while
# hypothesis generates; that is not the strategies' randomness.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_ten_thousand_generated_bad_records_all_reach_the_dead_letters(
    kafka: LocalKafka, tmp_path: Path, sandbox: Sandbox
) -> None:
    n_examples, n_bad_each, n_good_each = 100, 100, 2
    config = replay_config(tmp_path, kafka, n_examples * n_good_each, max_request_bytes=4000,
                           max_in_flight=256)  # fmt: skip
    ensure_topics(config.kafka)
    topics = config.kafka.topics
    sent_bad: Counter[bytes] = Counter()
    good_ids: list[str] = []

    with running(config, sandbox) as service:
        # No shrinking: each example is a round trip through the broker, and a
        # failure here is the service's, which the logs explain better.
        @settings(max_examples=n_examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck),
                  phases=[Phase.explicit, Phase.generate])  # fmt: skip
        @given(st.lists(_bad_messages(), min_size=n_bad_each, max_size=n_bad_each))
        def feed_mixed(bad: list[bytes]) -> None:
            # Nothing may be drawn from hypothesis after the ids are counted: a
            # draw that overruns its buffer abandons the example midway.
            first = len(good_ids)
            good = [request_json(first + i) for i in range(n_good_each)]
            mixed = bad + good
            random.Random(first).shuffle(mixed)
            feed(config.kafka, mixed)
            good_ids.extend(f"t{first + i}" for i in range(n_good_each))
            sent_bad.update(bad)
            wait_for(lambda: service.stats.n_requests >= sum(sent_bad.values()) + len(good_ids))

        feed_mixed()
        wait_for(lambda: service.stats.n_answers + service.stats.n_dead_letters
                 >= sum(sent_bad.values()) + len(good_ids))  # fmt: skip
    assert sum(sent_bad.values()) == n_examples * n_bad_each
    dead = list(follow(config.kafka, topics.deadletter, idle_timeout_s=5))
    assert Counter(d.value or b"" for d in dead) == sent_bad
    assert all(d.headers["reason"] and d.headers["error_type"] for d in dead)
    answered = {
        (r.key or b"").decode() for r in follow(config.kafka, topics.answers, idle_timeout_s=3)
    }
    assert answered == set(good_ids)
    assert service.stats.n_failed == 0


def test_two_instances_split_the_partitions_and_learn_from_each_other(
    kafka: LocalKafka, tmp_path: Path, sandbox: Sandbox
) -> None:
    n = 60
    config = replay_config(tmp_path, kafka, n, max_in_flight=4, snapshot_every=10**6)
    ensure_topics(config.kafka)
    other = config.model_copy(
        update={"kafka": config.kafka.model_copy(update={"instance_id": "i1"})}
    )
    with (
        running(config, sandbox, learn=True) as first,
        running(other, sandbox, learn=True) as second,
    ):
        about = lambda: (first.stats, second.stats)  # noqa: E731

        def split() -> bool:
            # Read from the test's thread: a snapshot of each member's partitions.
            owned = [s._consumer and len(s._consumer.assignment()) for s in (first, second)]
            return owned == [1, 1]

        # Feed once both members hold a partition, or the first could answer all.
        wait_for(split, 60, about)
        feed(config.kafka, [request_json(i) for i in range(n)])
        wait_for(lambda: first.stats.n_answers + second.stats.n_answers >= n, about=about)
        wait_for(lambda: first.stats.n_events_in + second.stats.n_events_in >= n, about=about)
    # Both served (two partitions, two members) and each learned the other's requests.
    assert first.stats.n_answers > 0 and second.stats.n_answers > 0
    assert first.stats.n_events_in == second.stats.n_events_out
    assert second.stats.n_events_in == first.stats.n_events_out
    assert first.learner is not None and second.learner is not None
    assert first.learner.n_requests == second.learner.n_requests == n


class SlowEngine:
    """An LLM-slow level: each request takes `seconds`."""

    def __init__(self, inner: Engine, seconds: float) -> None:
        self.inner, self.seconds = inner, seconds

    def process_many(self, requests: Sequence[CodeRequest]) -> list[CascadeAnswer | Exception]:
        time.sleep(self.seconds * len(requests))
        return self.inner.process_many(requests)


def test_slow_levels_keep_the_group_membership_and_stop_hands_back_work(
    kafka: LocalKafka, tmp_path: Path, sandbox: Sandbox
) -> None:
    n = 6
    # A batch (two requests of 2.5 s) takes five times the poll interval.
    config = replay_config(tmp_path, kafka, 2 * n, max_in_flight=2, max_poll_interval_ms=1000,
                           session_timeout_ms=6000, shutdown_timeout_s=60)  # fmt: skip
    ensure_topics(config.kafka)
    topics = config.kafka.topics
    feed(config.kafka, [request_json(i) for i in range(n)])
    engine = SlowEngine(build_engine(config, sandbox).engine, 2.5)
    service = CascadeService(config.kafka, engine)
    thread = threading.Thread(target=service.run)
    thread.start()
    wait_for(lambda: service.stats.n_answers >= 2, 60)
    service.stop()  # what SIGTERM does: the batch in hand is finished first
    thread.join(60)
    stats = service.stats
    # One assignment, never revoked: the paused consumer kept polling.
    assert stats.n_assignments == 1 and stats.n_revocations == 0, stats
    assert stats.n_answers in (2, 4) and stats.n_batches_retried == 0
    # Stopping with a grace period shorter than the batch hands it back, uncommitted.
    hurried = config.kafka.model_copy(update={"shutdown_timeout_s": 0.5})
    service = CascadeService(hurried, SlowEngine(build_engine(config, sandbox).engine, 2.5))
    thread = threading.Thread(target=service.run)
    thread.start()
    wait_for(lambda: service.stats.n_requests > 0, 60)
    service.stop()
    thread.join(60)
    handed_back = service.stats.n_requests - service.stats.n_answers
    assert handed_back > 0
    # A third instance answers everything that is left, nothing twice.
    with running(config, sandbox) as last:
        wait_for(lambda: stats.n_answers + service.stats.n_answers + last.stats.n_answers >= n)
    ids = [(r.key or b"").decode() for r in follow(config.kafka, topics.answers, idle_timeout_s=3)]
    assert sorted(ids) == sorted(f"t{i}" for i in range(n))


def test_throughput_bench_runs_both_paths_on_the_same_stream(tmp_path: Path) -> None:
    from streamcascade.benchtools.throughput import service_throughput

    report = service_throughput(n_requests=2000, n_warmup=300, work_dir=tmp_path)
    print("\n" + report.table())  # the figures; `streamcascade perf service` is the benchmark
    assert set(report.service_us_per_request) == {
        "at_least_once", "exactly_once", "at_least_once, metrics on", "at_least_once, run 2",
        "at_least_once, metrics on, run 2", "at_least_once, run 3",
    }  # fmt: skip
    assert "metrics on (scraped every second), 2 runs, against the 3 runs" in report.table()
    assert report.bench_us_per_request > 0 and report.share_at_level0 > 0


def test_cluster_ids_never_look_like_options() -> None:
    from streamcascade.service.broker import _cluster_id

    ids = [_cluster_id() for _ in range(2000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_ports_for_brokers_lie_below_the_range_outgoing_connections_draw_from() -> None:
    """A broker's port is picked seconds before the JVM binds it; a port in the
    ephemeral range can be taken meanwhile by any client's outgoing connection
    (a three-node start in CI died on "Address already in use")."""
    import socket

    from streamcascade.service.broker import _ephemeral_range, free_port

    low, _high = _ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert all(port < low for port in ports)
    assert len(set(ports)) == len(ports)  # never one promised already to a server not yet up
    for port in ports[:20]:  # and each one binds
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def _create_topics(broker: LocalKafka, partitions: dict[str, int]) -> None:
    """Topics by name and partition count (the broker does not auto-create them)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    try:
        admin.create_topics([NewTopic(name, n, 1) for name, n in partitions.items()])
    finally:
        admin.close()


def _read_with_a_pause(broker: LocalKafka, topic: str, release: bool) -> dict[int, int]:
    """Records read per partition when the first partition to return records is
    paused at once, the other one is read to its end, and the first is resumed."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, group_id=None,
                             max_poll_records=5, auto_offset_reset="earliest")  # fmt: skip
    n_read = {0: 0, 1: 0}

    def poll_for(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if release:
                release_parked_records(consumer)
            for partition, records in consumer.poll(timeout_ms=100).items():
                n_read[partition.partition] += len(records)

    try:
        consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        first: dict[Any, list[Any]] = {}
        while not first:
            first = consumer.poll(timeout_ms=500)
        [(paused, records)] = first.items()
        n_read[paused.partition] += len(records)
        consumer.pause(paused)  # records of it are still in line: they get parked
        poll_for(3.0)
        consumer.resume(paused)
        poll_for(3.0)
    finally:
        consumer.close()
    return n_read


def test_a_partition_paused_with_records_in_line_is_read_again_once_resumed(
    kafka: LocalKafka,
) -> None:
    """The service pauses its partitions during every batch. kafka-python 3.0.12
    strands a paused partition's parked records for good once another
    partition's records were read (a group-kill fault run once lost a quarter
    of the stream to it); `release_parked_records` before each poll frees them."""
    from kafka import KafkaProducer

    topic = f"parked-{time.monotonic_ns()}"
    _create_topics(kafka, {topic: 2})
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, linger_ms=50)
    for partition in (0, 1):
        for _ in range(200):
            producer.send(topic, value=b"x", partition=partition)
    producer.flush()
    producer.close()
    assert _read_with_a_pause(kafka, topic, release=True) == {0: 200, 1: 200}
    stranded = _read_with_a_pause(kafka, topic, release=False)
    # When this fails, kafka-python has fixed its fetcher: drop the workaround.
    assert sorted(stranded.values()) == [5, 200], stranded


class _StuckConsumer:
    """A consumer left with a paused partition and one that lags unfetched."""

    def __init__(self) -> None:
        self.paused_now = {"p0"}
        self.seeks: list[tuple[str, int]] = []

    def paused(self) -> set[str]:
        return set(self.paused_now)

    def resume(self, *partitions: str) -> None:
        self.paused_now -= set(partitions)

    def assignment(self) -> set[str]:
        return {"p0", "p1"}

    def end_offsets(self, partitions: list[str], timeout_ms: int | None = None) -> dict[str, int]:
        return {"p0": 10, "p1": 50}

    def position(self, partition: str, timeout_ms: int | None = None) -> int:
        return {"p0": 10, "p1": 20}[partition]

    def seek(self, partition: str, offset: int) -> None:
        self.seeks.append((partition, offset))


def test_between_batches_nothing_stays_paused_and_lagging_partitions_are_refetched() -> None:
    service = CascadeService(KafkaConfig(), engine=None)  # type: ignore[arg-type]
    consumer = _StuckConsumer()
    service._consumer = consumer
    service._unstick()
    assert consumer.paused_now == set() and consumer.seeks == []  # not idle long enough yet
    service._last_records_s -= 60
    service._last_check_s -= 60
    service._unstick()
    assert consumer.seeks == [("p1", 20)]  # only the partition that lags


class _Record:
    def __init__(self, partition: str, offset: int, value: bytes) -> None:
        self.topic, self.partition, self.offset = "requests", partition, offset
        self.key, self.value, self.headers = None, value, []


class _HandOverConsumer:
    """Holds p0 and p1; the first poll during the batch hands p1 to another
    instance (a rebalance mid-batch), as the rebalance listener reports it."""

    def __init__(self) -> None:
        self.held = {"p0", "p1"}
        self.on_lost: Callable[[set[Any]], None] = lambda lost: None
        self.committed: dict[str, Any] = {}

    def assignment(self) -> set[str]:
        return set(self.held)

    def pause(self, *partitions: str) -> None: ...

    def resume(self, *partitions: str) -> None: ...

    def poll(self, timeout_ms: int) -> dict[str, list[Any]]:
        time.sleep(timeout_ms / 1000)
        if "p1" in self.held:
            self.held = {"p0"}
            self.on_lost({"p1"})
        return {}

    def commit(self, offsets: dict[str, Any], timeout_ms: int) -> None:
        self.committed.update(offsets)


class _SentFuture:
    def get(self, timeout: float) -> None: ...


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None]] = []

    def send(self, topic: str, key: bytes | None, value: bytes, headers: object) -> _SentFuture:
        self.sent.append((topic, key))
        return _SentFuture()

    def flush(self, timeout: float) -> None: ...


class _EchoEngine:
    def process_many(self, requests: Sequence[CodeRequest]) -> list[CascadeAnswer | Exception]:
        return [CascadeAnswer(id=request.id, code="", level=0, model="echo", score=1.0,
                              attempts=[], tokens_in=0, tokens_out=0, seconds=0.0,
                              cost_usd=0.0) for request in requests]  # fmt: skip


def test_requests_of_a_partition_handed_over_mid_batch_are_left_to_the_new_owner() -> None:
    config = KafkaConfig(delivery="at_least_once")
    service = CascadeService(config, SlowEngine(_EchoEngine(), seconds=0.3))
    consumer, producer = _HandOverConsumer(), _Producer()
    consumer.on_lost = service._on_lost
    service._consumer, service.delivery.producer = consumer, producer
    service._handle(
        {
            "p0": [_Record("p0", 7, request_json(0))],
            "p1": [_Record("p1", 3, request_json(1)), _Record("p1", 4, b"not json")],
        }
    )
    # p0's answer goes out and is committed; p1's answer and dead letter are not
    # written, and its offsets are not committed: its new owner reads them.
    assert producer.sent == [(config.topics.answers, b"t0")]
    assert {p: o.offset for p, o in consumer.committed.items()} == {"p0": 8}
    assert service.stats.n_answers == 1 and service.stats.n_dead_letters == 0


def test_the_rebalance_listener_reports_only_partitions_no_longer_held() -> None:
    held: set[str] = set()
    lost: list[set[Any]] = []
    listener = _Rebalances(ServiceStats(), lambda: False, lambda: set(held), lost.append)
    held = {"p0", "p1"}
    listener.on_partitions_assigned(held)
    # Eager protocol: everything is revoked, p0 comes back with its position kept.
    listener.on_partitions_revoked({"p0", "p1"})
    held = {"p0", "p2"}
    listener.on_partitions_assigned(held)
    listener.on_partitions_lost({"p0", "p2"})
    assert lost == [{"p1"}, {"p0", "p2"}]


def _stale_and_fresh_metadata(kafka: LocalKafka, topic: str, group: str) -> tuple[Any, Any, Any]:
    """A group member, its group metadata, and the metadata after it rejoined
    (a new generation: the first is stale, as after a rebalance)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, group_id=group,
                             enable_auto_commit=False, session_timeout_ms=6000)  # fmt: skip
    consumer.subscribe([topic])
    while not consumer.assignment():
        consumer.poll(timeout_ms=200)
    stale = consumer.group_metadata()
    consumer.unsubscribe()
    consumer.subscribe([topic])
    while not consumer.assignment():
        consumer.poll(timeout_ms=200)
    assert consumer.group_metadata().generation_id != stale.generation_id
    return consumer, stale, consumer.group_metadata()


def _wait_committed(consumer: Any, partition: Any, offset: int) -> None:
    """Transactional offsets become visible once the commit markers are written."""
    wait_for(lambda: consumer.committed(partition) == offset, 30.0)


def test_offsets_of_a_failed_transaction_are_never_committed_by_the_next(
    kafka: LocalKafka,
) -> None:
    """kafka-python 3.0.12 keeps the offsets of a transaction whose offset commit
    failed (stale group metadata after a rebalance) and commits them with the
    next transaction: a fault run lost a batch that way. The service replaces
    its producer after a failed transaction."""
    from kafka import KafkaProducer, TopicPartition

    topic = f"txn-{time.monotonic_ns()}"
    _create_topics(kafka, {topic: 2, f"{topic}.out": 1})
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    out = Output(f"{topic}.out", b"k", b"v", [])

    # The library alone: the stale offset for p0 rides along with p1's.
    consumer, stale, fresh = _stale_and_fresh_metadata(kafka, topic, f"{topic}-raw")
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers,
                             transactional_id=f"{topic}-raw")  # fmt: skip
    producer.init_transactions()
    producer.begin_transaction()
    with pytest.raises(Exception, match=r"IllegalGeneration|UnknownMember"):
        producer.send_offsets_to_transaction({p0: OffsetAndMetadata(100, "", -1)}, stale)
    producer.abort_transaction()
    producer.begin_transaction()
    producer.send_offsets_to_transaction({p1: OffsetAndMetadata(5, "", -1)}, fresh)
    producer.commit_transaction()
    producer.close()
    _wait_committed(consumer, p1, 5)
    # When this fails, kafka-python clears them on abort: the rebuild can go.
    assert consumer.committed(p0) == 100, "kafka-python no longer carries failed offsets over"
    consumer.close()

    # The service: the failed batch's offset is never committed.
    consumer, stale, _ = _stale_and_fresh_metadata(kafka, topic, f"{topic}-service")
    config = KafkaConfig(bootstrap_servers=[kafka.bootstrap_servers], group_id=f"{topic}-service",
                         delivery="exactly_once", instance_id="txn")  # fmt: skip
    delivery = CascadeService(config, _EchoEngine()).delivery
    assert isinstance(delivery, ExactlyOnce)
    delivery.open()
    real_metadata = consumer.group_metadata
    consumer.group_metadata = lambda: stale  # the rebalance came between poll and commit
    with pytest.raises(BatchFailed):
        delivery.commit(consumer, [out], {p0: OffsetAndMetadata(100, "", -1)})
    consumer.group_metadata = real_metadata
    delivery.commit(consumer, [out], {p1: OffsetAndMetadata(5, "", -1)})
    _wait_committed(consumer, p1, 5)
    assert consumer.committed(p0) is None
    delivery.close()
    consumer.close()


def test_a_producer_with_unsent_records_closes_at_once(tmp_path: Path) -> None:
    """kafka-python 3.0.12's close(timeout=0) raises while records are unsent and
    leaves the sender running until they expire (2 min); `close_at_once` ends it."""
    from kafka import KafkaProducer

    with LocalKafka(tmp_path / "kafka", partitions=1) as broker:
        ensure_topics(KafkaConfig(bootstrap_servers=[broker.bootstrap_servers]))
        producers = []
        for _ in range(2):
            producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=5)
            producer.send("code.answers", value=b"sent").get(timeout=30)
            producers.append(producer)
        broker.stop()
        for producer in producers:
            producer.send("code.answers", value=b"never sent")
        plain, ours = producers
        with pytest.raises(Exception, match="Timeout"):
            plain.close(timeout=0)
        time.sleep(1.0)
        # When this fails, kafka-python force-closes on its own: drop close_at_once.
        assert plain._sender.is_alive()
        close_at_once(ours)
        wait_for(lambda: not ours._sender.is_alive(), 10.0)
        plain._sender.force_close()


def _get(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def _metric(text: str, name: str) -> float:
    """The sum of a metric's samples (every label set) in Prometheus text format."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and line[len(name)] in " {"
    )


def test_serve_metrics_health_and_readiness_count_what_was_fed(
    kafka: LocalKafka, tmp_path: Path
) -> None:
    """A real `streamcascade serve` on a real broker: /metrics accounts for
    every record fed, /healthz and /readyz say it is alive and serving."""
    import os
    import signal
    import subprocess
    import sys

    import yaml

    n = 12
    from streamcascade.service.broker import free_port

    port = free_port()  # below the ephemeral range: no client takes it before the service binds
    raw = shared_replay_config(tmp_path, kafka.bootstrap_servers, n, instance_id="m0",
                               partitions=2, metrics_address=f"127.0.0.1:{port}")  # fmt: skip
    config_path = tmp_path / "serve.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    config = AppConfig.model_validate(raw)
    ensure_topics(config.kafka)
    feed(config.kafka, [request_json(i) for i in range(n)] + BAD[:3])
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log_file:
        serve = subprocess.Popen(
            [sys.executable, "-m", "streamcascade.cli", "serve", "--config", str(config_path)],
            stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:

        def answered() -> bool:
            try:
                status, text = _get(f"{base}/metrics")
            except OSError:
                return False
            return status == 200 and _metric(text, "streamcascade_answers_total") >= n

        wait_for(answered, 120, lambda: log_path.read_text()[-2000:])
        wait_for(lambda: _get(f"{base}/readyz")[0] == 200, 30, lambda: _get(f"{base}/readyz"))
        _, text = _get(f"{base}/metrics")
        assert _metric(text, "streamcascade_requests_total") == n + 3
        assert _metric(text, "streamcascade_answers_total") == n
        assert _metric(text, "streamcascade_dead_letters_total") == 3
        assert 'streamcascade_dead_letters_total{error_type="NotJson"} 1.0' in text
        assert 'streamcascade_dead_letters_total{error_type="NotUtf8"} 1.0' in text
        # Every answer came from level 1 (see replay_config), each timed end to end.
        assert _metric(text, "streamcascade_answers_total") == _metric(
            text, 'streamcascade_answers_total{level="1"}'
        )
        assert _metric(text, "streamcascade_answer_seconds_count") == n
        assert _metric(text, "streamcascade_cost_usd_total") > 0
        assert _metric(text, "streamcascade_partitions_owned") == 2
        assert 'streamcascade_backend_breaker_open{backend="small"} 0.0' in text
        assert _get(f"{base}/healthz") == (200, "ok\n")
        assert _get(f"{base}/nope")[0] == 404
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0, log_path.read_text()[-2000:]
    assert "batch of " in log_path.read_text()
