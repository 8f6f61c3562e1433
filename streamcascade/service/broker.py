"""A local Apache Kafka: one KRaft node (broker and controller) on 127.0.0.1.

The jars come from Maven Central through `mvn dependency:copy-dependencies`
(Maven keeps its own cache in ~/.m2; the copied jars stay in the cache dir, so a
second start resolves nothing). This is for tests and local use; a deployment
runs its own Kafka (see docker/compose.yaml).
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType

from platformdirs import user_cache_dir

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.25.3"

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
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId>
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
    """The directory of Kafka's jars (with a log4j2 binding), resolved once."""
    home = (cache_dir or default_kafka_dir()) / f"kafka-{version}"
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cluster_id() -> str:
    """Kafka's cluster id format: a UUID as unpadded URL-safe base64, never
    starting with "-" (the storage tool would read it as an option; Kafka's own
    Uuid.randomUuid() avoids those too)."""
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


class LocalKafka:
    """One Kafka node on 127.0.0.1, its data in `data_dir`.

    Stopping and starting again keeps the data and the ports, so a test can
    restart the broker mid-stream. Use as a context manager, or start/stop.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        heap_mb: int = 512,
        cache_dir: Path | None = None,
        log_level: str = "WARN",
        partitions: int = 1,
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.controller_port = free_port()
        self.heap_mb = heap_mb
        self.cache_dir = cache_dir
        self.log_level = log_level
        self.partitions = partitions
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        properties = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "logs"),
            "num.partitions": str(self.partitions),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "group.initial.rebalance.delay.ms": "0",
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
        if self.process is not None and self.process.poll() is None:
            return
        if shutil.which("java") is None:
            raise BrokerError("java is not on PATH: Kafka runs on the JVM")
        libs = fetch_kafka(self.cache_dir)
        config = self._write_config()
        if not (self.data_dir / "logs" / "meta.properties").exists():
            format_command = self._java(
                libs, "kafka.tools.StorageTool", "format", "--standalone",
                "-t", _cluster_id(), "-c", str(config),
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
        self._wait_ready(timeout_s)
        log.info("Kafka %s up at %s", KAFKA_VERSION, self.bootstrap_servers)

    def _wait_ready(self, timeout_s: float) -> None:
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

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
