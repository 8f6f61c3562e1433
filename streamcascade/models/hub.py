"""Any GGUF file on the Hugging Face hub, named ``hf:OWNER/REPO/FILE.gguf``
(``@REVISION`` at the end pins a branch, tag or commit).

Files go through `huggingface_hub`, so its cache (``HF_HOME``,
``HF_HUB_CACHE``), token (``HF_TOKEN``, ``huggingface-cli login``) and mirror
(``HF_ENDPOINT``) settings apply as they do for every other tool that uses it.
Offline, only the cache is consulted, with no network call. The hub stores an
LFS file under its sha256, so a cached blob is checked against its own name
before it is loaded (once per process).

>>> hub = parse_hub_name("hf:Qwen/Qwen2.5-Coder-7B-Instruct-GGUF/qwen2.5-coder-7b-q4_k_m.gguf")
>>> hub.repo_id, hub.filename, hub.revision
('Qwen/Qwen2.5-Coder-7B-Instruct-GGUF', 'qwen2.5-coder-7b-q4_k_m.gguf', None)
>>> parse_hub_name("hf:owner/repo/sub/model.gguf@v1.0").revision
'v1.0'
>>> parse_hub_name("qwen2.5-coder-0.5b-instruct-q4_k_m") is None
True
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "hf:"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK_BYTES = 8 * 1024 * 1024


class HubNameError(ValueError):
    """An ``hf:`` name that does not say which repository and file."""


class HubFetchError(RuntimeError):
    """The hub (or its mirror) could not supply the file."""


class HubNotCached(HubFetchError):
    """Offline, and the file is not in the Hugging Face cache."""


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    filename: str
    revision: str | None

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.repo_id}/{self.filename}" + (
            f"@{self.revision}" if self.revision else ""
        )


def parse_hub_name(name: str) -> HubFile | None:
    """The repository, file and revision of an ``hf:`` name; None for any other name."""
    if not name.startswith(PREFIX):
        return None
    rest, _, revision = name[len(PREFIX) :].partition("@")
    parts = [p for p in rest.split("/") if p]
    if len(parts) < 3 or not parts[-1].endswith(".gguf"):
        raise HubNameError(
            f"{name!r}: a Hugging Face model is hf:OWNER/REPO/FILE.gguf (optionally "
            "@REVISION), e.g. hf:Qwen/Qwen2.5-Coder-7B-Instruct-GGUF/"
            "qwen2.5-coder-7b-instruct-q4_k_m.gguf"
        )
    return HubFile("/".join(parts[:2]), "/".join(parts[2:]), revision or None)


def cached_path(hub: HubFile) -> Path | None:
    """Where the Hugging Face cache holds the file, or None: no network call."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub.repo_id, hub.filename, revision=hub.revision)
    return Path(found) if isinstance(found, str) else None


def _not_cached(hub: HubFile) -> HubNotCached:
    from huggingface_hub import constants

    return HubNotCached(
        f"{hub.name} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and downloads "
        f"are off (offline): run `streamcascade models {hub.name}` once while online, or "
        f"point HF_HUB_CACHE at a cache that holds it"
    )


@functools.lru_cache(maxsize=64)
def _verify_blob(blob: Path, size: int, mtime_ns: int) -> None:
    """A blob named by a sha256 must hash to it (a truncated or corrupted
    download must not load)."""
    if not _SHA256.match(blob.name):
        return  # a small non-LFS file: the hub names it by a git hash instead
    digest = hashlib.sha256()
    with blob.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    if digest.hexdigest() != blob.name:
        raise HubFetchError(
            f"{blob}: sha256 is {digest.hexdigest()}, not the {blob.name} the hub recorded; "
            "delete it to fetch it again"
        )


def resolve_hub_file(hub: HubFile, offline: bool = False, timeout_s: float = 10.0) -> Path:
    """The verified local path of the file, fetched into the Hugging Face cache
    unless it is there already (offline: never fetched)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        path = Path(
            hf_hub_download(
                hub.repo_id, hub.filename, revision=hub.revision, local_files_only=offline,
                etag_timeout=timeout_s,
            )  # type: ignore[arg-type]
        )  # fmt: skip
    except LocalEntryNotFoundError:
        if offline:
            raise _not_cached(hub) from None
        raise HubFetchError(f"{hub.name}: the hub is unreachable and it is not cached") from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as error:
        raise HubFetchError(f"{hub.name}: {type(error).__name__}: {error}") from None
    except (HfHubHTTPError, OSError) as error:
        raise HubFetchError(f"{hub.name}: {error}") from None
    blob = Path(os.path.realpath(path))
    stat = blob.stat()
    _verify_blob(blob, stat.st_size, stat.st_mtime_ns)
    return path


@dataclass(frozen=True)
class HubCacheEntry:
    name: str
    path: Path
    size_bytes: int


def hub_cache_entries() -> list[HubCacheEntry]:
    """The GGUF files the Hugging Face cache holds, by their ``hf:`` names."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir()
    except (CacheNotFound, OSError):
        return []
    entries = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            for file in revision.files:
                if file.file_name.endswith(".gguf"):
                    relative = file.file_path.relative_to(revision.snapshot_path)
                    name = f"{PREFIX}{repo.repo_id}/{relative.as_posix()}@{revision.commit_hash}"
                    entries.append(HubCacheEntry(name, file.file_path, file.size_on_disk))
    return entries
