"""What stands between a level and its backend: loading on first use, a call
timeout (a hung model must not stall the batch), the request's deadline and a
circuit breaker (a backend that keeps failing is not called until a cool-down
has passed, then one probe call decides)."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

from streamcascade.backends.base import (
    Backend,
    BackendError,
    BackendUnavailable,
    Completion,
    GenerationParams,
    LearnsFromAnswers,
    Prompt,
)

log = logging.getLogger(__name__)

BreakerState = Literal["closed", "open", "half_open"]

_deadline: ContextVar[float | None] = ContextVar("streamcascade_deadline", default=None)


@contextlib.contextmanager
def generation_deadline(at_monotonic_s: float | None) -> Iterator[None]:
    """Backend calls made inside end by `at_monotonic_s` (time.monotonic()), or
    fail with `BackendError`; the engine sets it per request (or per batch, to
    the earliest of its requests' deadlines)."""
    token = _deadline.set(at_monotonic_s)
    try:
        yield
    finally:
        _deadline.reset(token)


def deadline_remaining_s() -> float | None:
    """Seconds left before the current request's generation deadline (None: no deadline)."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


@dataclass(frozen=True)
class BreakerSettings:
    failures_to_open: int = 3
    cooldown_s: float = 30.0


class CircuitBreaker:
    """Closed: calls pass and consecutive failures are counted. Open (after
    `failures_to_open` of them): calls are refused until `cooldown_s` passed.
    Half-open: one probe call passes; success closes, failure opens again.

    >>> clock = [0.0]
    >>> breaker = CircuitBreaker(BreakerSettings(2, 10.0), clock=lambda: clock[0])
    >>> breaker.failure(); breaker.failure(); breaker.state
    'open'
    >>> breaker.allow()
    False
    >>> clock[0] = 11.0
    >>> breaker.allow(), breaker.state, breaker.allow()
    (True, 'half_open', False)
    >>> breaker.success(); breaker.state
    'closed'
    """

    def __init__(
        self,
        settings: BreakerSettings,
        name: str = "backend",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self.state: BreakerState = "closed"
        self.consecutive_failures = 0
        self.opened_at_s = 0.0
        self.n_opened = 0
        self.n_closed = 0
        self._probing = False

    def allow(self) -> bool:
        """Whether a call may go through now (an open breaker past its cool-down
        lets exactly one probe through)."""
        with self._lock:
            if self.state == "closed":
                return True
            if (
                self.state == "open"
                and self._clock() - self.opened_at_s >= self.settings.cooldown_s
            ):
                self.state = "half_open"
                self._probing = True
                log.info("%s: breaker half-open, probing", self.name)
                return True
            return False

    def success(self) -> None:
        with self._lock:
            if self.state != "closed":
                log.info("%s: breaker closed", self.name)
                self.n_closed += 1
            self.state = "closed"
            self.consecutive_failures = 0
            self._probing = False

    def failure(self) -> None:
        with self._lock:
            self.consecutive_failures += 1
            if self.state == "half_open" or (
                self.state == "closed"
                and self.consecutive_failures >= self.settings.failures_to_open
            ):
                if self.state == "closed":
                    self.n_opened += 1
                log.warning(
                    "%s: breaker open for %.0f s after %d failures",
                    self.name,
                    self.settings.cooldown_s,
                    self.consecutive_failures,
                )
                self.state = "open"
                self.opened_at_s = self._clock()
                self._probing = False

    def release(self) -> None:
        """A call that passed ended neither in success nor in a backend failure
        (the request itself was bad): a probe slot is given back."""
        with self._lock:
            if self.state == "half_open" and self._probing:
                self.state = "open"
                self.opened_at_s = self._clock() - self.settings.cooldown_s
                self._probing = False


class GuardedBackend:
    """A backend, built on first use, behind a breaker and a timeout. Implements
    `Backend`; the pool hands one per backend config to every level using it.

    A call that raises `BackendError` or outlives its timeout counts as a
    failure; one that raises anything else (a request the model cannot take)
    propagates as it is and counts as neither.
    """

    def __init__(
        self,
        build: Callable[[], Backend],
        name: str,
        breaker: BreakerSettings | None = None,
        call_timeout_s: float = 300.0,
        prompts_per_call: int | None = None,
        may_hang: bool = True,
        learns_online: bool = False,
    ) -> None:
        """`prompts_per_call`: a batch is split into calls of at most this many
        prompts, each with its own timeout (None: one call). `may_hang` False:
        calls run on the caller's thread, with no timeout (see
        `BackendSettings.may_hang`)."""
        self.may_hang = may_hang
        self.learns_online = learns_online
        self._build = build
        self.prompts_per_call = prompts_per_call
        self._backend: Backend | None = None
        self._build_lock = threading.Lock()
        self._name = name
        self.breaker = CircuitBreaker(breaker or BreakerSettings(), name=name)
        self.call_timeout_s = call_timeout_s
        self.n_calls = 0
        self.n_failures = 0

    @property
    def loaded(self) -> bool:
        return self._backend is not None

    def backend(self) -> Backend:
        """The backend itself, built now if it was not yet."""
        with self._build_lock:
            if self._backend is None:
                self._backend = self._build()
            return self._backend

    @property
    def model_name(self) -> str:
        return self.backend().model_name if self._backend is None else self._backend.model_name

    def generate(self, prompts: list[Prompt], params: GenerationParams) -> list[list[Completion]]:
        size = self.prompts_per_call or len(prompts) or 1
        results: list[list[Completion]] = []
        for start in range(0, len(prompts), size):
            results.extend(self._guarded(prompts[start : start + size], params))
        return results

    def learn(self, prompts: list[Prompt], answers: list[str]) -> None:
        """Hands the answers to a backend that learns from them (and builds
        nothing for one that does not). Learning is the backend's own work in
        memory, outside the breaker: it never calls a model."""
        if not self.learns_online:
            return
        backend = self.backend()
        if isinstance(backend, LearnsFromAnswers):
            backend.learn(prompts, answers)

    def learn_outcomes(self, prompts: list[Prompt], answers: list[str], right: list[bool]) -> None:
        if not self.learns_online:
            return
        backend = self.backend()
        if isinstance(backend, LearnsFromAnswers):
            backend.learn_outcomes(prompts, answers, right)

    def _guarded(self, prompts: list[Prompt], params: GenerationParams) -> list[list[Completion]]:
        if not self.breaker.allow():
            raise BackendUnavailable(f"{self._name}: circuit breaker open")
        self.n_calls += 1
        try:
            # Built (a model fetched and loaded) before the call's clock starts:
            # a first run on a fresh machine downloads 1.6 GB, which is no hang,
            # and timed with the call it turned every request of the README's
            # first command into a dead letter.
            backend = self.backend()
            timeout_s = self.call_timeout_s
            deadline = _deadline.get()
            if deadline is not None:
                timeout_s = min(timeout_s, deadline - time.monotonic())
                if timeout_s <= 0:
                    self.breaker.release()
                    raise _DeadlinePassed(f"{self._name}: the request's generation deadline passed")
            if self.may_hang:
                result = _call_with_timeout(lambda: backend.generate(prompts, params), timeout_s)
            else:
                result = backend.generate(prompts, params)
        except _DeadlinePassed as error:
            self.n_calls -= 1  # not a call: the deadline passed before it
            raise BackendError(str(error)) from None
        except BackendError:
            self.n_failures += 1
            self.breaker.failure()
            raise
        except TimeoutError:
            self.n_failures += 1
            self.breaker.failure()
            raise BackendError(f"{self._name}: no answer within {timeout_s:.1f} s") from None
        except BaseException:
            self.breaker.release()
            raise
        self.breaker.success()
        return result


class _DeadlinePassed(Exception):
    """The request's deadline passed before the call could start."""


class _Callers:
    """Daemon threads that run backend calls and wait for the next one. A new
    thread per call cost about 250 us (measured on a replay backend: a third
    of a cheap request's time); a call that never returns keeps its thread,
    and another starts when no thread is idle."""

    def __init__(self) -> None:
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()

    def _work(self) -> None:
        while True:
            self._tasks.get()()
            with self._lock:
                self._idle += 1

    def run(self, task: Callable[[], None]) -> None:
        with self._lock:
            start = self._idle == 0
            if not start:
                self._idle -= 1
        if start:
            threading.Thread(target=self._work, name="backend-call", daemon=True).start()
        self._tasks.put(task)


_CALLERS = _Callers()


def _call_with_timeout(
    call: Callable[[], list[list[Completion]]], timeout_s: float
) -> list[list[Completion]]:
    """Run `call` on a worker thread and wait at most `timeout_s`. A call that
    overruns is left to finish on its own (a C extension cannot be interrupted);
    its result is dropped."""
    box: dict[str, object] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["result"] = call()
        except BaseException as error:  # handed to the caller below
            box["error"] = error
        finally:
            done.set()

    # The call sees the caller's context (its deadline among it).
    context = contextvars.copy_context()
    _CALLERS.run(lambda: context.run(run))
    if not done.wait(timeout_s):
        raise TimeoutError
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def breaker_states(backends: dict[str, Backend]) -> dict[str, str]:
    """Each guarded backend's circuit breaker state ("closed", "open",
    "half_open"), by the name given; an unguarded backend has none and is left out."""
    return {
        name: backend.breaker.state
        for name, backend in backends.items()
        if isinstance(backend, GuardedBackend)
    }
