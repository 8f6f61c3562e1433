"""A broker that goes away once `serve` runs is waited out: the loop keeps
the batch it answered and commits it when the broker is back, a failed poll
does not end it, only `outage_limit_s` does, and a stop during an outage ends
in time with one line about what was handed back. Fakes for the loop's logic;
a real broker, stopped under a real service, for the whole."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from kafka import OffsetAndMetadata
from kafka.errors import KafkaConnectionError, KafkaTimeoutError

from streamcascade.benchtools.faults import replay_config, request_value
from streamcascade.cascade.build import build_engine
from streamcascade.config import AppConfig, KafkaConfig
from streamcascade.sandbox import Sandbox
from streamcascade.schemas import CascadeAnswer, CodeRequest
from streamcascade.service.broker import LocalKafka
from streamcascade.service.delivery import AtLeastOnce, BatchFailed, ExactlyOnce, Output
from streamcascade.service.kafka_io import restart_fetching
from streamcascade.service.outage import BrokerLink, BrokerOutage
from streamcascade.service.tools import feed
from streamcascade.service.worker import CascadeService, ensure_topics


def wait_for(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# -- the link ------------------------------------------------------------------


def test_the_link_logs_one_line_per_change_of_state_not_per_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    link = BrokerLink(outage_limit_s=None, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="streamcascade.service.outage"):
        for _ in range(50):
            link.failed("poll", KafkaConnectionError("111 ECONNREFUSED"))
            now[0] += 1.0
        link.ok()
        link.ok()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 2, lines
    assert "broker unreachable" in lines[0] and "ECONNREFUSED" in lines[0]
    assert "reachable again after 50.0 s" in lines[1]
    assert link.up and link.n_outages == 1 and link.outage_s_total == 50.0


def test_an_outage_longer_than_the_limit_is_an_unavailable_error() -> None:
    now = [0.0]
    link = BrokerLink(outage_limit_s=30.0, clock=lambda: now[0])
    link.failed("commit", KafkaTimeoutError("no answer"))
    now[0] = 29.0
    link.check_limit()  # not yet
    now[0] = 31.0
    with pytest.raises(BrokerOutage, match=r"unreachable for 31 s, over kafka.outage_limit_s"):
        link.check_limit()
    assert BrokerOutage("x").exit_code == 4


# -- the loop, on fakes --------------------------------------------------------


class _Record:
    def __init__(self, partition: str, offset: int, value: bytes) -> None:
        self.topic, self.partition, self.offset = "requests", partition, offset
        self.key, self.value, self.headers = None, value, []


class _Consumer:
    """Owns p0; `polls` scripts what each poll returns or raises ({} after)."""

    def __init__(self, polls: list[Any]) -> None:
        self.polls = polls
        self.paused_now: set[str] = set()

    def assignment(self) -> set[str]:
        return {"p0"}

    def pause(self, *partitions: str) -> None:
        self.paused_now |= set(partitions)

    def resume(self, *partitions: str) -> None:
        self.paused_now -= set(partitions)

    def paused(self) -> set[str]:
        return set(self.paused_now)

    def poll(self, timeout_ms: int = 0) -> dict[str, list[Any]]:
        time.sleep(min(timeout_ms, 20) / 1000)
        if not self.polls:
            return {}
        step = self.polls.pop(0)
        if isinstance(step, BaseException):
            raise step
        return dict(step)

    def end_offsets(self, partitions: list[str], timeout_ms: int | None = None) -> dict[str, int]:
        return {p: 0 for p in partitions}

    def position(self, partition: str, timeout_ms: int | None = None) -> int:
        return 0


class _Inbox:
    def poll(self, timeout_ms: int = 0) -> dict[str, list[Any]]:
        return {}


class _Echo:
    def __init__(self) -> None:
        self.n_calls = 0

    def process_many(self, requests: Sequence[CodeRequest]) -> list[CascadeAnswer | Exception]:
        self.n_calls += 1
        return [CascadeAnswer(id=r.id, code="", level=0, model="echo", score=1.0, attempts=[],
                              tokens_in=0, tokens_out=0, seconds=0.0, cost_usd=0.0)
                for r in requests]  # fmt: skip


class _FlakyDelivery:
    """Fails `n_failures` commits (an outage), then writes."""

    def __init__(self, n_failures: int) -> None:
        self.n_failures = n_failures
        self.committed: list[tuple[list[Output], dict[Any, Any]]] = []
        self.closed_at_once: bool | None = None

    def commit(self, consumer: Any, outputs: list[Output], offsets: dict[Any, Any]) -> None:
        if self.n_failures > 0:
            self.n_failures -= 1
            raise BatchFailed("KafkaTimeoutError: flush")
        self.committed.append((outputs, offsets))

    def close(self, at_once: bool = False) -> None:
        self.closed_at_once = at_once


def _service(
    polls: list[Any], delivery: Any, engine: Any = None, **settings: Any
) -> CascadeService:
    """A service whose loop runs on fakes (no broker)."""
    config = KafkaConfig(delivery="at_least_once", **settings)
    service = CascadeService(config, engine or _Echo())
    service._consumer = _Consumer(polls)
    service.inbox.consumer = _Inbox()
    service.delivery = delivery
    return service


def _loop_in_thread(service: CascadeService) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            service._loop()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


BATCH = {"p0": [_Record("p0", 7, request_value(0)), _Record("p0", 8, request_value(1))]}


def test_an_answered_batch_is_kept_through_failed_commits_and_committed_once_back() -> None:
    delivery, engine = _FlakyDelivery(n_failures=3), _Echo()
    service = _service([BATCH], delivery, engine)
    readiness: list[str | None] = []
    service._owned = 1
    thread, errors = _loop_in_thread(service)
    wait_for(lambda: service.link.n_outages == 1)
    readiness.append(service.not_ready())
    wait_for(lambda: service.stats.n_answers == 2)
    service.stop()
    thread.join(10)
    assert not thread.is_alive() and not errors
    assert engine.n_calls == 1  # answered once, not run again
    [(outputs, offsets)] = delivery.committed
    assert [o.key for o in outputs] == [b"t0", b"t1"] and offsets["p0"].offset == 9
    assert readiness[0] is not None and readiness[0].startswith("broker unreachable")
    assert service.link.up and service.not_ready() == "stopping"
    assert service.stats.n_batches == 1 and service.stats.n_batches_retried == 1
    assert service._consumer.paused() == set()  # resumed once committed


def test_a_poll_that_raises_is_an_outage_not_the_end_of_the_service() -> None:
    refused = KafkaConnectionError("111 ECONNREFUSED")
    delivery = _FlakyDelivery(n_failures=0)
    service = _service([refused, refused, refused, BATCH], delivery)
    thread, errors = _loop_in_thread(service)
    wait_for(lambda: service.stats.n_answers == 2)
    service.stop()
    thread.join(10)
    assert not errors and service.link.n_outages >= 1 and service.link.up


def test_only_an_outage_over_the_limit_ends_the_loop() -> None:
    refused = KafkaConnectionError("111 ECONNREFUSED")
    service = _service([refused] * 1000, _FlakyDelivery(0), outage_limit_s=1.0)
    started = time.monotonic()
    with pytest.raises(BrokerOutage, match="outage_limit_s"):
        service._loop()
    assert 1.0 <= time.monotonic() - started < 10.0


def test_a_stop_during_an_outage_ends_in_time_and_says_what_was_handed_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    delivery = _FlakyDelivery(n_failures=10**6)
    service = _service([BATCH], delivery, shutdown_timeout_s=1.0)
    with caplog.at_level(logging.WARNING):
        thread, errors = _loop_in_thread(service)
        wait_for(lambda: service._pending is not None and service.link.n_outages == 1)
        stopped = time.monotonic()
        service.stop()
        thread.join(10)
        took_s = time.monotonic() - stopped
    assert not thread.is_alive() and not errors
    assert took_s < 3.0, took_s
    handed_back = [r.getMessage() for r in caplog.records if "not committed" in r.getMessage()]
    assert len(handed_back) == 1 and "2 answered requests" in handed_back[0]
    assert delivery.committed == []


# -- deliveries, on fake clients ----------------------------------------------


class _Future:
    def __init__(self) -> None:
        self.done = False

    def failed(self) -> bool:
        return False

    def get(self, timeout: float) -> None:
        if not self.done:
            raise KafkaTimeoutError("not acknowledged yet")


class _Producer:
    def __init__(self) -> None:
        self.sent: list[Output] = []
        self.futures: list[_Future] = []
        self.transactions: list[str] = []
        self.fail_commit = False

    def send(self, topic: str, key: bytes | None, value: bytes, headers: object) -> _Future:
        self.sent.append(Output(topic, key, value, []))
        self.futures.append(_Future())
        return self.futures[-1]

    def flush(self, timeout: float) -> None: ...

    def begin_transaction(self) -> None:
        self.transactions.append("begin")

    def send_offsets_to_transaction(self, offsets: Any, metadata: Any) -> None:
        self.transactions.append("offsets")

    def commit_transaction(self) -> None:
        if self.fail_commit:
            raise KafkaConnectionError("connection lost while committing")
        self.transactions.append("commit")


class _GroupConsumer:
    def __init__(self) -> None:
        self.committed_offsets: dict[str, int] = {}
        self.commits: list[dict[str, Any]] = []

    def assignment(self) -> set[str]:
        return {"p0"}

    def group_metadata(self) -> str:
        return "generation-1"

    def committed(self, partition: str, timeout_ms: int | None = None) -> int | None:
        return self.committed_offsets.get(partition)

    def commit(self, offsets: dict[str, Any], timeout_ms: int | None = None) -> None:
        self.commits.append(offsets)


def test_at_least_once_waits_for_records_still_in_flight_instead_of_sending_them_again() -> None:
    delivery = AtLeastOnce(KafkaConfig(transaction_timeout_s=0.1), "i0", lambda: False)
    producer, consumer = _Producer(), _GroupConsumer()
    delivery.producer = producer
    outputs = [Output("answers", b"t0", b"a", []), Output("answers", b"t1", b"b", [])]
    offsets = {"p0": OffsetAndMetadata(9, "", -1)}
    with pytest.raises(BatchFailed):
        delivery.commit(consumer, outputs, offsets)  # the broker went away
    for future in producer.futures:
        future.done = True  # acknowledged once it was back
    delivery.commit(consumer, outputs, offsets)
    assert [o.key for o in producer.sent] == [b"t0", b"t1"]  # each sent once
    assert consumer.commits == [offsets]


def test_exactly_once_does_not_write_again_a_batch_whose_cut_off_commit_went_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    delivery = ExactlyOnce(KafkaConfig(transaction_timeout_s=5), "i0", lambda: False)
    first, second, consumer = _Producer(), _Producer(), _GroupConsumer()
    first.fail_commit = True
    delivery.producer = first
    monkeypatch.setattr(delivery, "_new_producer", lambda: second)
    monkeypatch.setattr("streamcascade.service.delivery.close_at_once", lambda producer: None)
    outputs = [Output("answers", b"t0", b"a", [])]
    offsets = {"p0": OffsetAndMetadata(9, "", -1)}
    with pytest.raises(BatchFailed):
        delivery.commit(consumer, outputs, offsets)
    consumer.committed_offsets["p0"] = 9  # the broker had committed it all the same
    delivery.commit(consumer, outputs, offsets)
    assert second.transactions == [] and second.sent == []
    consumer.committed_offsets["p0"] = 9
    delivery.commit(consumer, outputs, {"p0": OffsetAndMetadata(12, "", -1)})  # the next batch
    assert second.transactions == ["begin", "offsets", "commit"]


class _InitProducer(_Producer):
    """A transactional producer whose init hangs, as kafka-python 3.0.12's
    does when it asked a broker that was just killed for the coordinator."""

    instances: list[_InitProducer] = []
    hang = True

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        self.closed = threading.Event()
        _InitProducer.instances.append(self)

    def init_transactions(self) -> None:
        if _InitProducer.hang:
            self.closed.wait(30)

    def close(self, timeout: float | None = None) -> None:
        self.closed.set()


def test_an_init_that_hangs_while_a_broker_is_away_is_given_up_and_tried_afresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("kafka.KafkaProducer", _InitProducer)
    monkeypatch.setattr(_InitProducer, "instances", [])
    # Port 1 refuses connections: a broker of the cluster is away.
    config = KafkaConfig(bootstrap_servers=["127.0.0.1:1"], transaction_timeout_s=20)
    delivery = ExactlyOnce(config, "i0", lambda: False)
    reasons = []
    for _ in range(5):
        with pytest.raises(BatchFailed) as failed:
            delivery.commit(_GroupConsumer(), [], {})
        reasons.append(str(failed.value))
    # Given up long before the 20 s timeout, the fifth time after longer (a slow
    # cluster with a node down still gets its full timeout in the end).
    given_up_s = [float(reason.split("given up after ")[1].split(" s")[0]) for reason in reasons]
    assert min(given_up_s) >= 1.0 and given_up_s[4] >= 2.0 and max(given_up_s) < 20
    assert all("a broker went away (127.0.0.1:1)" in reason for reason in reasons)
    # Each stuck producer was closed before the next one started, so its init
    # cannot land after its replacement's and fence it.
    assert [producer.closed.is_set() for producer in _InitProducer.instances] == [True] * 5
    monkeypatch.setattr(_InitProducer, "hang", False)
    delivery.commit(_GroupConsumer(), [Output("answers", b"t0", b"a", [])], {})
    assert _InitProducer.instances[-1].transactions == ["begin", "commit"]


# -- kafka-python's fetcher, on a fake -------------------------------------------


def test_restarting_fetching_makes_the_next_fetch_a_full_one_and_drops_a_hung_validation() -> None:
    class Metadata:
        INITIAL: Any = None

    Metadata.INITIAL = Metadata()

    class Handler:
        next_metadata: Any = Metadata()

    class Task:
        is_done = False

    class Fetcher:
        _session_handlers = {1: Handler(), 2: Handler()}
        _validation_task: Any = Task()
        _reset_task: Any = None

    class Consumer:
        _fetcher = Fetcher()

    consumer = Consumer()
    restart_fetching(consumer)
    assert all(h.next_metadata is Metadata.INITIAL for h in Fetcher._session_handlers.values())
    assert consumer._fetcher._validation_task is None
    restart_fetching(object())  # a fetcher without these fields: nothing to do


# -- a real broker, stopped under a real service -------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalKafka]:
    with LocalKafka(tmp_path / "kafka", partitions=2) as kafka:
        yield kafka


class _SlowEngine:
    def __init__(self, inner: Any, seconds: float) -> None:
        self.inner, self.seconds = inner, seconds
        self.started = threading.Event()

    def process_many(self, requests: Sequence[CodeRequest]) -> list[CascadeAnswer | Exception]:
        self.started.set()
        time.sleep(self.seconds)
        result: list[CascadeAnswer | Exception] = self.inner.process_many(requests)
        return result


@pytest.mark.slow
@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_a_stop_while_the_broker_is_down_hands_the_batch_back_and_nothing_is_lost(
    broker: LocalKafka, tmp_path: Path, sandbox: Sandbox, delivery: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """The broker stops while a batch is being answered; the commit cannot
    happen; /readyz says why; SIGTERM's stop ends within the shutdown timeout
    with one line; once the broker is back, a new instance answers them all."""
    n = 4
    settings = {"instance_id": "i0", "partitions": 2, "delivery": delivery,
                "shutdown_timeout_s": 3.0, "transaction_timeout_s": 5.0}  # fmt: skip
    config = AppConfig.model_validate(replay_config(tmp_path, broker.bootstrap_servers, n,
                                                    **settings))  # fmt: skip
    ensure_topics(config.kafka)
    feed(config.kafka, [request_value(i) for i in range(n)])
    engine = _SlowEngine(build_engine(config, sandbox).engine, seconds=3.0)
    service = CascadeService(config.kafka, engine)
    thread = threading.Thread(target=service.run)
    with caplog.at_level(logging.WARNING):
        thread.start()
        assert engine.started.wait(60)
        broker.stop()
        wait_for(lambda: not service.link.up, 60)
        why = service.not_ready()
        assert why is not None and why.startswith("broker unreachable"), why
        stopped = time.monotonic()
        service.stop()
        thread.join(30)
        took_s = time.monotonic() - stopped
    assert not thread.is_alive()
    assert took_s < config.kafka.shutdown_timeout_s + 12, took_s  # + closing the clients
    messages = [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert any("not committed" in m or "unanswered" in m for m in messages), messages
    assert service.stats.n_answers == 0

    broker.start()
    again = CascadeService(config.kafka.model_copy(update={"instance_id": "i1"}),
                           build_engine(config, sandbox).engine)  # fmt: skip
    thread = threading.Thread(target=again.run)
    thread.start()
    try:
        wait_for(lambda: again.stats.n_answers >= n, 120)
    finally:
        again.stop()
        thread.join(60)
    assert again.stats.n_answers == n


def test_serve_gives_up_on_an_outage_with_the_unavailable_exit_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from streamcascade.cli.logs import report_error as _report

    assert _report(BrokerOutage("Kafka unreachable for 61 s, over kafka.outage_limit_s")) == 4
    assert "outage_limit_s" in capsys.readouterr().err


class _RebalancingConsumer(_Consumer):
    """Owns p0 and p1; during the batch a rebalance revokes both, and a second
    after the batch was answered assigns p0 only (p1 went to the instance that
    just joined)."""

    def __init__(self) -> None:
        super().__init__([])
        self.held = {"p0", "p1"}
        self.listener: Any = None
        self.n_polls = 0
        self.revoked_at: float | None = None

    def assignment(self) -> set[str]:
        return set(self.held)  # kafka-python reports the old one until the new is in

    def poll(self, timeout_ms: int = 0) -> dict[str, list[Any]]:
        time.sleep(min(timeout_ms, 20) / 1000)
        self.n_polls += 1
        if self.n_polls == 1:
            return {"p0": [_Record("p0", 7, request_value(0))],
                    "p1": [_Record("p1", 3, request_value(1))]}  # fmt: skip
        if self.n_polls == 2:
            self.listener.on_partitions_revoked({"p0", "p1"})
            self.revoked_at = time.monotonic()
        elif self.revoked_at is not None and time.monotonic() - self.revoked_at > 1.3:
            self.revoked_at = None
            self.held = {"p0"}
            self.listener.on_partitions_assigned({"p0"})
        return {}


def test_a_batch_answered_across_a_rebalance_commits_only_what_stays_here() -> None:
    from streamcascade.service.worker import _Rebalances

    delivery = _FlakyDelivery(n_failures=0)
    service = _service([], delivery, _SlowEcho(0.3))
    consumer = _RebalancingConsumer()
    service._consumer = consumer
    listener = _Rebalances(service.stats, service._stop.is_set, consumer.assignment,
                           service._on_lost)  # fmt: skip
    listener.owned = {"p0", "p1"}
    consumer.listener = service._rebalances = listener
    thread, errors = _loop_in_thread(service)
    wait_for(lambda: service.stats.n_batches == 1)
    service.stop()
    thread.join(10)
    assert not errors
    [(outputs, offsets)] = delivery.committed
    assert [o.key for o in outputs] == [b"t0"] and set(offsets) == {"p0"}
    assert service.link.n_outages == 0  # a rebalance is no outage


class _SlowEcho(_Echo):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def process_many(self, requests: Sequence[CodeRequest]) -> list[CascadeAnswer | Exception]:
        time.sleep(self.seconds)
        return super().process_many(requests)
