"""A local Apache Kafka on 127.0.0.1: one KRaft node (broker and controller),
or a cluster of three such nodes whose controllers form one quorum.

The jars come from Maven Central through `mvn dependency:copy-dependencies`
(Maven keeps its own cache in ~/.m2; the copied jars stay in the cache dir, so a
second start resolves nothing). This is for tests and local use; a deployment
runs its own Kafka (see docker/compose.yaml).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from platformdirs import user_cache_dir

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.25.3"

_POM_REVISION = 2
_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>streamcascade</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {path}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
"""


class BrokerError(RuntimeError):
    """Kafka could not be fetched or started; the message carries the tool's output."""


def default_kafka_dir() -> Path:
    return Path(user_cache_dir("streamcascade")) / "kafka"


def fetch_kafka(cache_dir: Path | None = None, version: str = KAFKA_VERSION) -> Path:
    """The directory of Kafka's jars (with a log4j2 binding), resolved once.
    Kafka 4.1 logs through SLF4J 1.7, so the binding is log4j-slf4j-impl (the
    SLF4J 2 one that an earlier POM named left the broker's log empty); the
    directory name carries the POM's revision, so a changed POM resolves anew."""
    home = (cache_dir or default_kafka_dir()) / f"kafka-{version}-pom{_POM_REVISION}"
    libs = home / "libs"
    done = home / ".complete"
    if done.exists():
        return libs
    if shutil.which("mvn") is None:
        raise BrokerError("mvn is not on PATH: it resolves Kafka's jars from Maven Central")
    home.mkdir(parents=True, exist_ok=True)
    (home / "pom.xml").write_text(_POM.format(kafka=version, log4j=LOG4J_VERSION))
    staging = home / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    log.info("resolving Apache Kafka %s from Maven Central into %s", version, libs)
    command = [
        "mvn", "-q", "-B", "-f", str(home / "pom.xml"), "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}", "-DincludeScope=runtime",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-4000:]
        raise BrokerError(f"mvn failed ({result.returncode}) resolving Kafka {version}:\n{tail}")
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    done.write_text(version)
    return libs


_EPHEMERAL_RANGE_PATH = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_PORT = 10_000
_handed_out: set[int] = set()  # by this process: never the same port twice


def _ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands to outgoing connections and to bind(0)
    (Linux's default where it cannot be read)."""
    try:
        low, high = (int(part) for part in _EPHEMERAL_RANGE_PATH.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def free_port() -> int:
    """A loopback port that is free now and that no outgoing connection will
    take before a server binds it.

    A port from bind(0) lies in the ephemeral range, which every outgoing
    connection draws from too: between picking it and a broker binding it
    (seconds, for a JVM), a client connecting anywhere may take it, and the
    broker dies with "Address already in use" (seen in CI on a three-node
    cluster's start). Ports below that range are only taken by explicit
    binds, so one picked at random there and free now stays free.
    """
    low, high = _ephemeral_range()
    candidates = range(_LOWEST_PORT, low) if low - _LOWEST_PORT >= 1000 else range(high + 1, 65536)
    for _ in range(200):
        port = random.choice(candidates)
        if port in _handed_out:  # free now, but promised to a server not yet started
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise BrokerError(f"no free loopback port in {candidates.start}-{candidates.stop - 1}")


def _cluster_id() -> str:
    """Kafka's cluster id format: a UUID as unpadded URL-safe base64, never
    starting with "-" (the storage tool would read it as an option; Kafka's own
    Uuid.randomUuid() avoids those too)."""
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


class _Running(ABC):
    """Start on entering, stop on leaving: what a broker and a cluster share."""

    @abstractmethod
    def start(self) -> None:
        """Start, and return once it serves."""

    @abstractmethod
    def stop(self) -> None:
        """Stop cleanly."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class LocalKafka(_Running):
    """One Kafka node on 127.0.0.1, its data in `data_dir`.

    Stopping and starting again keeps the data and the ports, so a test can
    restart the broker mid-stream. Use as a context manager, or start/stop.
    As one node of a `KafkaCluster`, `node_id`, `controller_port` and
    `voters` (every node's `ID@HOST:PORT`) place it in the quorum, and
    `replication` is what internal topics (offsets, transactions) and new
    topics get, with `min.insync.replicas` one less.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        heap_mb: int = 512,
        cache_dir: Path | None = None,
        log_level: str = "WARN",
        partitions: int = 1,
        node_id: int = 1,
        controller_port: int | None = None,
        voters: str | None = None,
        replication: int = 1,
        cluster_id: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self.heap_mb = heap_mb
        self.cache_dir = cache_dir
        self.log_level = log_level
        self.partitions = partitions
        self.node_id = node_id
        self.voters = voters
        self.replication = replication
        self.cluster_id = cluster_id
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        replication = str(self.replication)
        min_isr = str(max(1, self.replication - 1))
        quorum = (
            {"controller.quorum.voters": self.voters}
            if self.voters
            else {"controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}"}
        )
        properties = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            **quorum,
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "logs"),
            "num.partitions": str(self.partitions),
            "default.replication.factor": replication,
            "min.insync.replicas": min_isr,
            "unclean.leader.election.enable": "false",
            "offsets.topic.replication.factor": replication,
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": replication,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": replication,
            "group.initial.rebalance.delay.ms": "0",
            # A node restarted after a SIGKILL registers again only once the
            # controller has given up on its old session: 3 s, not 9 s, so a
            # crashed local broker is back sooner (tests restart it often).
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
            "auto.create.topics.enable": "false",
        }
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in properties.items()))
        (self.data_dir / "log4j2.properties").write_text(
            _LOG4J2.format(path=self.log_path, level=self.log_level)
        )
        return path

    def _java(self, libs: Path, *args: str, heap_mb: int = 256) -> list[str]:
        return [
            "java", f"-Xms{heap_mb}m", f"-Xmx{heap_mb}m", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp", f"{libs}/*", *args,
        ]  # fmt: skip

    def start(self, timeout_s: float = 90.0) -> None:
        if self.running:
            return
        self.launch()
        self.wait_ready(timeout_s)
        log.info("Kafka %s up at %s", KAFKA_VERSION, self.bootstrap_servers)

    def launch(self) -> None:
        """Format the storage (once) and start the JVM; `wait_ready` waits for it."""
        if self.running:
            return
        if shutil.which("java") is None:
            raise BrokerError("java is not on PATH: Kafka runs on the JVM")
        libs = fetch_kafka(self.cache_dir)
        config = self._write_config()
        if not (self.data_dir / "logs" / "meta.properties").exists():
            # A lone node is its own quorum (--standalone); a cluster's nodes
            # name the voters in their config and share one cluster id.
            quorum = [] if self.voters else ["--standalone"]
            format_command = self._java(
                libs, "kafka.tools.StorageTool", "format", *quorum,
                "-t", self.cluster_id or _cluster_id(), "-c", str(config),
            )  # fmt: skip
            result = subprocess.run(format_command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise BrokerError(
                    f"formatting Kafka storage failed:\n{(result.stdout + result.stderr)[-4000:]}"
                )
        out = (self.data_dir / "broker.out").open("ab")
        self.process = subprocess.Popen(
            self._java(libs, "kafka.Kafka", str(config), heap_mb=self.heap_mb),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C meant for the tests is not the broker's
        )
        out.close()

    def quorum_state(self) -> tuple[int, int] | None:
        """(leader id, leader epoch) of the metadata quorum as this node last
        recorded it, or None."""
        path = self.data_dir / "logs" / "__cluster_metadata-0" / "quorum-state"
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        leader = state.get("leaderId", -1)
        return (int(leader), int(state.get("leaderEpoch", -1))) if leader >= 0 else None

    def wait_ready(self, timeout_s: float) -> None:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout_s
        last_error = "not started"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise BrokerError(
                    f"Kafka exited with {self.process.returncode} while starting:\n"
                    + self._output_tail()
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    pass
                admin = KafkaAdminClient(
                    bootstrap_servers=self.bootstrap_servers, request_timeout_ms=5000
                )
                try:
                    admin.describe_cluster()
                    return
                finally:
                    admin.close()
            except (OSError, KafkaError) as error:
                last_error = repr(error)
                time.sleep(0.25)
        self.stop()
        raise BrokerError(
            f"Kafka not ready after {timeout_s} s ({last_error}):\n{self._output_tail()}"
        )

    def _output_tail(self) -> str:
        parts = []
        for path in (self.data_dir / "broker.out", self.log_path):
            if path.exists():
                parts.append(path.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def stop(self, timeout_s: float = 30.0) -> None:
        """A clean shutdown (SIGTERM), then SIGKILL if it hangs."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


class KafkaCluster(_Running):
    """`n_nodes` Kafka nodes on 127.0.0.1, each a broker and a voter of one
    controller quorum (static voters), internal topics replicated to every
    node and `min.insync.replicas` one less: a cluster that keeps serving
    while any one node is down. Same interface as `LocalKafka` for starting
    and stopping the whole; `nodes` for one of them.
    """

    def __init__(
        self,
        data_dir: Path,
        n_nodes: int = 3,
        heap_mb: int = 384,
        cache_dir: Path | None = None,
        log_level: str = "WARN",
        partitions: int = 1,
    ) -> None:
        controller_ports = [free_port() for _ in range(n_nodes)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{port}" for i, port in enumerate(controller_ports))
        cluster_id = _cluster_id()
        self.data_dir = data_dir
        self.nodes = [
            LocalKafka(
                data_dir / f"node-{i + 1}", heap_mb=heap_mb, cache_dir=cache_dir,
                log_level=log_level, partitions=partitions, node_id=i + 1,
                controller_port=controller_ports[i], voters=voters,
                replication=n_nodes, cluster_id=cluster_id,
            )
            for i in range(n_nodes)
        ]  # fmt: skip

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.bootstrap_servers for node in self.nodes)

    def node(self, node_id: int) -> LocalKafka:
        return self.nodes[node_id - 1]

    def start(self, timeout_s: float = 120.0) -> None:
        """All nodes at once: a quorum needs a majority to elect its leader."""
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.wait_ready(timeout_s)
        self.wait_brokers(len(self.nodes), timeout_s)
        log.info("Kafka cluster of %d nodes up at %s", len(self.nodes), self.bootstrap_servers)

    def stop(self) -> None:
        """Every node at once (one by one, each waits for the others to take
        over its partitions)."""
        for node in self.nodes:
            if node.running and node.process is not None:
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            node.stop()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def _admin(self) -> Any:
        from kafka import KafkaAdminClient

        running = [node.bootstrap_servers for node in self.nodes if node.running]
        return KafkaAdminClient(bootstrap_servers=running, request_timeout_ms=10_000)

    def wait_brokers(self, n_brokers: int, timeout_s: float = 120.0) -> None:
        """Until `n_brokers` brokers are registered with the cluster."""
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                admin = self._admin()
                try:
                    if len(admin.describe_cluster()["brokers"]) >= n_brokers:
                        return
                finally:
                    admin.close()
            except KafkaError as error:
                log.debug("cluster not ready: %r", error)
            if time.monotonic() > deadline:
                raise BrokerError(f"fewer than {n_brokers} brokers after {timeout_s} s")
            time.sleep(0.5)

    def partition_leader(self, topic: str, partition: int = 0) -> int:
        """The node id leading one partition of a topic."""
        admin = self._admin()
        try:
            [described] = admin.describe_topics([topic])
        finally:
            admin.close()
        for entry in described["partitions"]:
            if entry["partition_index"] == partition:
                return int(entry["leader_id"])
        raise BrokerError(f"{topic} has no partition {partition}")

    def wait_in_sync(self, topics: list[str], timeout_s: float = 120.0) -> None:
        """Until every partition of `topics` has all its replicas in sync (what a
        rolling restart waits for before it takes the next node down)."""
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                admin = self._admin()
                try:
                    described = admin.describe_topics(topics)
                finally:
                    admin.close()
                if all(
                    len(p["isr_nodes"]) == len(p["replica_nodes"]) and p["leader_id"] >= 0
                    for topic in described
                    for p in topic["partitions"]
                ):
                    return
            except KafkaError as error:
                log.debug("in-sync check failed: %r", error)
            if time.monotonic() > deadline:
                raise BrokerError(f"{topics} not in sync after {timeout_s} s")
            time.sleep(0.5)

    def active_controller(self, timeout_s: float = 30.0) -> int:
        """The quorum leader's node id, as the running nodes last recorded it
        (the newest epoch wins), once it is a running node. Kafka's
        DescribeCluster names a random broker in KRaft mode, and kafka-python
        has no DescribeQuorum."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = [state for node in self.nodes if node.running
                      if (state := node.quorum_state()) is not None]  # fmt: skip
            if states:
                leader = max(states, key=lambda state: state[1])[0]
                if self.node(leader).running:
                    return leader
            if time.monotonic() > deadline:
                raise BrokerError(f"no running node leads the quorum after {timeout_s} s")
            time.sleep(0.2)
