"""Checks a command makes before it loads a model or opens a sandbox: the
files it was given, every level's backend, the broker. Each failure is a
`UserError` that names the file, field or address and says what to do, so a
mistake costs a second, not a model load and a traceback."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path

from streamcascade.config import AppConfig
from streamcascade.errors import InputError, Unavailable, UserError
from streamcascade.models import ModelFetchError, ModelNotCached, UnknownModel

KAFKA_HINT = (
    "start a local broker with `streamcascade kafka` (needs java and mvn), or pass "
    "--bootstrap-servers HOST:PORT (or set kafka.bootstrap_servers in the config)"
)


def check_input_file(path: Path, what: str = "input") -> None:
    """A file the command will read: it exists, is a file, and can be opened."""
    if not path.exists():
        raise InputError(f"{what} file not found: {path}")
    if path.is_dir():
        raise InputError(f"{what} {path} is a directory, not a file")
    try:
        with path.open("rb"):
            pass
    except OSError as error:
        raise InputError(f"{what} file {path}: cannot be read: {error.strerror}") from None


def check_output_file(path: Path, what: str = "output") -> None:
    """A file the command will append to: its directory exists and is writable."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(
            f"{what} file {path}: directory {parent} does not exist", hint=f"mkdir -p {parent}"
        )
    if path.is_dir():
        raise InputError(f"{what} {path} is a directory, not a file")


def check_backends(config: AppConfig) -> None:
    """Every level's backend (and the fallback level's), as far as can be told
    without loading it: recordings that exist, models that resolve."""
    levels = list(config.levels)
    if config.failures.fallback is not None:
        levels.append(config.failures.fallback)
    for level in levels:
        try:
            level.backend.check(config.model_cache_dir, config.offline)
        except ModelNotCached as error:
            raise Unavailable(f"level {level.name!r}: {error}") from None
        except (UnknownModel, ModelFetchError) as error:
            raise InputError(
                f"level {level.name!r}: {error}",
                hint="`streamcascade models` lists the known names and fetches them",
            ) from None
        except UserError as error:
            raise type(error)(f"level {level.name!r}: {error}", error.hint) from None


def _address(server: str) -> tuple[str, int]:
    host, _, port = server.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"bootstrap server {server!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def check_address(address: str, what: str) -> tuple[str, int]:
    """HOST:PORT to listen on."""
    try:
        return _address(address)
    except InputError:
        raise InputError(f"{what} {address!r} is not HOST:PORT (e.g. 0.0.0.0:9108)") from None


def check_broker(bootstrap_servers: Sequence[str], timeout_s: float = 5.0) -> None:
    """At least one bootstrap server accepts a TCP connection (kafka-python
    would otherwise retry for about 40 s and then fail with a timeout)."""
    problems = []
    for server in bootstrap_servers:
        try:
            with socket.create_connection(_address(server), timeout=timeout_s):
                return
        except OSError as error:
            problems.append(f"{server}: {error.strerror or error}")
    raise Unavailable("no Kafka broker reachable at " + "; ".join(problems), hint=KAFKA_HINT)
