"""Any GGUF by Hugging Face repository and file (`hf:OWNER/REPO/FILE.gguf`),
through huggingface_hub, against a real HTTP server on loopback that speaks the
hub's resolve protocol (HF_ENDPOINT points there, as it would at a mirror)."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamcascade.models.hub import HubNameError, parse_hub_name

DATA = b"GGUF" + bytes(range(256)) * 8
SHA = hashlib.sha256(DATA).hexdigest()


class _Hub(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def _headers(self) -> bool:
        self.requests.append(f"{self.command} {self.path}")
        if self.path != "/owner/repo/resolve/main/tiny.gguf":
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()
            return False
        self.send_response(200)
        self.send_header("X-Repo-Commit", "c" * 40)
        self.send_header("ETag", f'"{SHA}"')
        self.send_header("X-Linked-Etag", f'"{SHA}"')
        self.send_header("X-Linked-Size", str(len(DATA)))
        self.send_header("Content-Length", str(len(DATA)))
        self.end_headers()
        return True

    def do_HEAD(self) -> None:
        self._headers()

    def do_GET(self) -> None:
        if self._headers():
            self.wfile.write(DATA)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[dict[str, str]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        **os.environ,
        "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
        "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "STREAMCASCADE_MODEL_CACHE": str(tmp_path / "models"),
    }
    env.pop("STREAMCASCADE_OFFLINE", None)
    env.pop("HF_HUB_OFFLINE", None)
    _Hub.requests = []
    yield env
    server.shutdown()


def _models(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamcascade", "models", *args],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_names_are_parsed_or_refused_with_the_form() -> None:
    hub = parse_hub_name("hf:owner/repo/dir/x.gguf@abc")
    assert hub is not None and (hub.repo_id, hub.filename, hub.revision) == (
        "owner/repo", "dir/x.gguf", "abc",
    )  # fmt: skip
    with pytest.raises(HubNameError, match=r"hf:OWNER/REPO/FILE\.gguf"):
        parse_hub_name("hf:owner/x.gguf")


def test_a_hub_file_is_fetched_into_the_hf_cache_listed_and_then_used_offline(
    hub: dict[str, str],
) -> None:
    fetched = _models(hub, "hf:owner/repo/tiny.gguf")
    assert fetched.returncode == 0, fetched.stderr
    path = Path(fetched.stdout.split("\t")[1].strip())
    assert path.read_bytes() == DATA
    assert str(path).startswith(hub["HF_HUB_CACHE"])
    assert "GET /owner/repo/resolve/main/tiny.gguf" in _Hub.requests
    listed = _models(hub, "--list")
    assert f"hf:owner/repo/tiny.gguf@{'c' * 40}\tcached" in listed.stdout
    # Offline: from the cache, and not one request to the hub.
    _Hub.requests.clear()
    offline = _models({**hub, "STREAMCASCADE_OFFLINE": "1"}, "hf:owner/repo/tiny.gguf")
    assert offline.returncode == 0, offline.stderr
    assert _Hub.requests == []


def test_offline_and_not_cached_says_what_to_do(hub: dict[str, str]) -> None:
    result = _models({**hub, "HF_HUB_OFFLINE": "1"}, "hf:owner/repo/tiny.gguf")
    assert result.returncode == 4
    assert "not in the Hugging Face cache" in result.stderr
    assert "streamcascade models hf:owner/repo/tiny.gguf" in result.stderr
    assert _Hub.requests == []


def test_a_missing_file_and_a_corrupted_blob_are_clear_errors(hub: dict[str, str]) -> None:
    missing = _models(hub, "hf:owner/repo/other.gguf")
    assert missing.returncode == 4 and "hf:owner/repo/other.gguf" in missing.stderr
    fetched = _models(hub, "hf:owner/repo/tiny.gguf")
    blob = Path(os.path.realpath(fetched.stdout.split("\t")[1].strip()))
    blob.write_bytes(DATA[:-1] + b"x")
    corrupted = _models({**hub, "STREAMCASCADE_OFFLINE": "1"}, "hf:owner/repo/tiny.gguf")
    assert corrupted.returncode == 4 and f"not the {SHA} the hub recorded" in corrupted.stderr
