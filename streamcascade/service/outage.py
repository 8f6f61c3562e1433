"""A broker that goes away is a state of the service, not an error.

Once `serve` runs, every Kafka call of its loop that fails (a poll, a commit, a
transaction, the inbox, a lag check) reports to one `BrokerLink`. The first
failure turns the link down and logs one line; later failures during the same
outage log nothing above DEBUG; the first call that succeeds again turns it up
and logs one line with how long it was down. While it is down the loop backs
off (0.2 s doubling to 2 s, cut short by a stop) and tries again, keeping the
batch it has answered until it can be committed. Only an outage longer than
`KafkaConfig.outage_limit_s` (None: never) ends the service, with
`BrokerOutage` (exit code 4, like a broker missing at start).

kafka-python logs each failed connection attempt itself; `RepeatFilter` lets
one line of each kind through per minute, so an outage of an hour is a few
lines, not thousands.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from streamcascade.errors import Unavailable

log = logging.getLogger(__name__)


class BrokerOutage(Unavailable):
    """The broker stayed away longer than `outage_limit_s`."""


class BrokerLink:
    """Whether the broker answers, as the service's own calls find it.

    >>> link = BrokerLink(outage_limit_s=None, clock=lambda: 0.0)
    >>> link.up, link.n_outages
    (True, 0)
    >>> link.failed("commit", TimeoutError("no answer"))
    >>> link.up, link.n_outages, link.why
    (False, 1, 'commit: no answer')
    >>> link.ok()
    >>> link.up
    True
    """

    def __init__(
        self,
        outage_limit_s: float | None,
        clock: Callable[[], float] = time.monotonic,
        min_backoff_s: float = 0.2,
        max_backoff_s: float = 2.0,
    ) -> None:
        self.outage_limit_s = outage_limit_s
        self._clock = clock
        self._min_backoff_s = min_backoff_s
        self._max_backoff_s = max_backoff_s
        self._backoff_s = min_backoff_s
        self.down_since: float | None = None
        """clock() when the current outage began; None while up."""
        self.why = ""
        """What failed first in the current (or last) outage."""
        self.n_outages = 0
        self.outage_s_total = 0.0
        """Seconds spent down in outages that ended."""
        self.on_up: list[Callable[[], None]] = []
        """Called when an outage ends."""

    @property
    def up(self) -> bool:
        return self.down_since is None

    def down_for_s(self) -> float:
        return 0.0 if self.down_since is None else self._clock() - self.down_since

    def failed(self, where: str, error: BaseException) -> None:
        """A Kafka call failed: the first failure of an outage is logged."""
        if self.down_since is None:
            self.down_since = self._clock()
            self.n_outages += 1
            self.why = f"{where}: {error}"
            limit = (
                "for as long as it takes"
                if self.outage_limit_s is None
                else f"for up to {self.outage_limit_s:g} s"
            )
            log.warning(
                "broker unreachable (%s: %s): waiting %s; work in hand is kept",
                where, f"{type(error).__name__}: {error}", limit,
            )  # fmt: skip
        else:
            log.debug("broker still unreachable (%s: %r)", where, error)

    def ok(self) -> None:
        """A Kafka call that needs the broker succeeded."""
        self._backoff_s = self._min_backoff_s
        if self.down_since is not None:
            for callback in self.on_up:
                callback()
            down_s = self._clock() - self.down_since
            self.outage_s_total += down_s
            self.down_since = None
            log.warning("broker reachable again after %.1f s: resuming", down_s)

    def check_limit(self) -> None:
        """`BrokerOutage` once the outage has lasted longer than the limit."""
        if self.outage_limit_s is not None and self.down_for_s() > self.outage_limit_s:
            raise BrokerOutage(
                f"Kafka unreachable for {self.down_for_s():.0f} s, over kafka.outage_limit_s "
                f"({self.outage_limit_s:g} s); first failure: {self.why}"
            )

    def wait(self, stop: threading.Event) -> None:
        """Back off before the next try (returns early on a stop)."""
        self.check_limit()
        stop.wait(self._backoff_s)
        self._backoff_s = min(self._max_backoff_s, 2 * self._backoff_s)


class RepeatFilter(logging.Filter):
    """Lets a record of loggers under `prefix` through once per `every_s` for
    each logger and message template (kafka-python logs every failed
    connection attempt); others pass. A handler's filter: a logger's filter
    does not see its children's records.

    >>> now = [0.0]
    >>> repeats = RepeatFilter("kafka", every_s=60, clock=lambda: now[0])
    >>> record = logging.LogRecord("kafka.conn", logging.ERROR, "", 0, "refused %s", ("x",), None)
    >>> repeats.filter(record), repeats.filter(record)
    (True, False)
    >>> now[0] = 61.0
    >>> repeats.filter(record)
    True
    """

    def __init__(
        self, prefix: str, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.prefix = prefix
        self.every_s = every_s
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != self.prefix and not record.name.startswith(self.prefix + "."):
            return True
        key = (record.name, str(record.msg))
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.every_s:
                return False
            if len(self._last) > 1000:  # templates, not values: it stays small
                self._last.clear()
            self._last[key] = now
        return True
