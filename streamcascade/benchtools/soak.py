"""`streamcascade faults --soak-s SECONDS`: `serve` on a real broker for a long
while at a steady rate, hostile programs and malformed records mixed in.

What it checks (issue 13): every request in comes out, as an answer or a dead
letter; the service's memory (RSS) does not grow; and nothing is left on the
host afterwards: no process of a sandbox uid, no System V IPC object, no
sandbox cgroup.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from streamcascade.benchtools.faults import (
    AnswerCounter,
    ServiceProcess,
    request_value,
    write_replay_config,
)
from streamcascade.config import KafkaConfig
from streamcascade.sandbox.cgroups import slot_groups
from streamcascade.sandbox.leases import BASE_UID, N_UIDS, UidLeaser
from streamcascade.service.broker import LocalKafka
from streamcascade.service.kafka_io import client_settings, ensure_topics
from streamcascade.service.tools import record_key

log = logging.getLogger(__name__)

_RIGHT = "def double(x):\n    return 2 * x\n"
# What a level might answer with, hostile or broken; one in `HOSTILE_EVERY` tasks.
HOSTILE = {
    "fork bomb": "import os\ndef double(x):\n    while True:\n        try:\n"
    "            os.fork()\n        except OSError:\n            pass\n",
    "endless loop": "def double(x):\n    while True:\n        pass\n",
    "memory bomb": "def double(x):\n    return len(bytearray(8 * 1024 ** 3))\n",
    "daemon": "import os, time\ndef double(x):\n    if os.fork() == 0:\n        os.setsid()\n"
    "        time.sleep(600)\n    return 2 * x\n",
    "forged result lines": 'import os\ndef double(x):\n    line = b\'{"event": "test", '
    '"index": 0, "status": "passed"}\\n{"event": "done"}\\n\'\n'
    "    for fd in [f for f in map(int, os.listdir('/proc/self/fd')) if f > 2]:\n"
    "        try:\n            os.write(fd, line)\n"
    "        except OSError:\n            pass\n    os._exit(0)\n",
    "equal to everything": "class Yes:\n    def __eq__(self, other):\n        return True\n"
    "    __hash__ = object.__hash__\ndef double(x):\n    return Yes()\n",
    "shared memory left behind": "import ctypes\ndef double(x):\n"
    "    ctypes.CDLL(None).shmget(0x5C5C00 + x, 1 << 20, 0o1666)\n    return x + 2\n",
    "stdout flood": "def double(x):\n    while True:\n        print('x' * 10000)\n",
    "exits mid-test": "import os\ndef double(x):\n    os._exit(0)\n",
}
HOSTILE_EVERY = 10
MALFORMED_EVERY = 50


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _leased(uid: int) -> bool:
    """Whether a live process holds the uid's lease (see `sandbox.leases`):
    its processes and cgroup are that sandbox's own, not leftovers."""
    lease = UidLeaser().try_lease(uid)
    if lease is None:
        return True
    lease.release()
    return False


def sandbox_processes() -> int:
    """Live processes of sandbox uids no live sandbox holds: leftovers."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                uid = os.stat(f"/proc/{entry}").st_uid
            except OSError:
                continue
            if BASE_UID <= uid < BASE_UID + N_UIDS and not _leased(uid):
                count += 1
    return count


def sysv_objects() -> int:
    return sum(
        len(Path(f"/proc/sysvipc/{kind}").read_text().splitlines()) - 1
        for kind in ("shm", "msg", "sem")
    )


def sandbox_cgroups() -> int:
    """Slot cgroups whose uid no live sandbox holds: leftovers."""
    return sum(
        len(dirs)
        for uid, dirs in slot_groups().items()
        if not BASE_UID <= uid < BASE_UID + N_UIDS or not _leased(uid)
    )


@dataclass
class SoakReport:
    seconds: float
    n_in: int
    n_malformed: int
    n_hostile: int
    n_answers: int
    n_dead_letters: int
    rss_start_kb: int
    rss_end_kb: int
    leftover_processes: int
    leftover_ipc: int
    leftover_cgroups: int
    exit_code: int | None

    @property
    def n_lost(self) -> int:
        return self.n_in - self.n_answers - self.n_dead_letters

    @property
    def rss_growth(self) -> float:
        return self.rss_end_kb / self.rss_start_kb - 1.0 if self.rss_start_kb else 0.0

    def text(self) -> str:
        return "\n".join([
            f"soak: {self.seconds:.0f} s, {self.n_in} records in ({self.n_hostile} hostile "
            f"programs, {self.n_malformed} malformed records)",
            f"  answers out {self.n_answers}, dead letters {self.n_dead_letters}, "
            f"lost {self.n_lost}",
            f"  service RSS {self.rss_start_kb / 1024:.0f} MB after warm-up, "
            f"{self.rss_end_kb / 1024:.0f} MB at the end ({self.rss_growth:+.1%})",
            f"  left on the host: {self.leftover_processes} sandbox processes, "
            f"{self.leftover_ipc} System V IPC objects (more than before), "
            f"{self.leftover_cgroups} sandbox cgroups (of uids no live sandbox holds); "
            f"service exit code {self.exit_code}",
        ])  # fmt: skip


def _recordings(work_dir: Path, n_tasks: int) -> int:
    """Overwrite the small level's recordings: right, except every tenth task
    answered by a hostile program (the big level is always right)."""
    kinds = list(HOSTILE.values())
    n_hostile = 0
    with (work_dir / "small.jsonl").open("w") as out:
        for i in range(n_tasks):
            solution = _RIGHT
            if i % HOSTILE_EVERY == HOSTILE_EVERY - 1:
                solution = kinds[(i // HOSTILE_EVERY) % len(kinds)]
                n_hostile += 1
            out.write(json.dumps({"task_id": f"t{i}", "solution": solution}) + "\n")
    return n_hostile


def _feed_steadily(
    kafka: KafkaConfig, n_records: int, rate_per_s: float, stop: threading.Event
) -> tuple[int, int]:
    """One record every 1/rate seconds; every MALFORMED_EVERY-th is not JSON."""
    from kafka import KafkaProducer

    producer = KafkaProducer(**client_settings(kafka), acks="all", linger_ms=5)
    started = time.monotonic()
    n_sent = n_malformed = 0
    try:
        for i in range(n_records):
            if stop.is_set():
                break
            time.sleep(max(0.0, started + i / rate_per_s - time.monotonic()))
            if i % MALFORMED_EVERY == MALFORMED_EVERY - 1:
                value = b'{"id": "broken' + str(i).encode()
                n_malformed += 1
            else:
                value = request_value(i)
            producer.send(kafka.topics.requests, key=record_key(value), value=value)
            n_sent += 1
        producer.flush()
    finally:
        producer.close()
    return n_sent, n_malformed


def soak(work_dir: Path, seconds: float, rate_per_s: float = 1.0) -> SoakReport:
    """One soak run on its own broker; `seconds` of feeding, then draining."""
    n_records = max(1, int(seconds * rate_per_s))
    ipc_before = sysv_objects()
    with LocalKafka(work_dir / "kafka", partitions=4) as broker:
        config_path, kafka = write_replay_config(
            work_dir, broker.bootstrap_servers, n_records, "at_least_once"
        )
        n_hostile = sum(
            1 for i in range(n_records) if i % MALFORMED_EVERY != MALFORMED_EVERY - 1
            and i % HOSTILE_EVERY == HOSTILE_EVERY - 1
        )  # fmt: skip
        _recordings(work_dir, n_records)
        ensure_topics(kafka)
        service = ServiceProcess(config_path, "soak", work_dir)
        dead_config = kafka.model_copy(
            update={"topics": kafka.topics.model_copy(update={"answers": kafka.topics.deadletter})}
        )
        started = time.monotonic()
        stop = threading.Event()
        with AnswerCounter(kafka) as answers, AnswerCounter(dead_config) as dead:
            service.start()
            assert service.process is not None
            fed: list[tuple[int, int]] = []
            feeder = threading.Thread(
                target=lambda: fed.append(_feed_steadily(kafka, n_records, rate_per_s, stop)),
                daemon=True,
            )
            feeder.start()
            warm_up_s = min(120.0, seconds / 10)
            time.sleep(warm_up_s)
            rss_start = rss_kb(service.process.pid)
            feeder.join()
            n_sent, n_malformed = fed[0] if fed else (0, 0)
            deadline = time.monotonic() + 300
            while answers.distinct() + dead.total() < n_sent and time.monotonic() < deadline:
                time.sleep(1.0)
            rss_end = rss_kb(service.process.pid)
            time.sleep(2.0)
            exit_code = service.terminate()
            elapsed = time.monotonic() - started
            report = SoakReport(
                elapsed, n_sent, n_malformed, n_hostile, answers.distinct(), dead.total(),
                rss_start, rss_end, 0, 0, 0, exit_code,
            )  # fmt: skip
    time.sleep(1.0)
    report.leftover_processes = sandbox_processes()
    report.leftover_ipc = max(0, sysv_objects() - ipc_before)
    report.leftover_cgroups = sandbox_cgroups()
    log.info("soak: %s", report)
    return report
