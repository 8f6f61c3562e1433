"""OpenAI-compatible servers for tests and benchmarks (not the library's path):

- `LlamaCppServer`: llama-cpp-python's own server (`python -m llama_cpp.server`,
  from `llama-cpp-python[server]`) on 127.0.0.1 with a registry model, the
  real thing a user might run;
- `RecordedServer`: answers chat calls from recorded solutions after a fixed
  delay, with K parallel slots (what a batching GPU server looks like from the
  cascade's side), and can be stopped and started again on the same port.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from streamcascade.service.broker import free_port

log = logging.getLogger(__name__)


class LlamaCppServer:
    """`python -m llama_cpp.server` on a free loopback port, until `stop`."""

    def __init__(self, model_path: Path, model_alias: str, n_threads: int = 2,
                 n_ctx: int = 4096, log_path: Path | None = None) -> None:  # fmt: skip
        self.port = free_port()
        self.model_alias = model_alias
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path),
             "--model_alias", model_alias, "--host", "127.0.0.1", "--port", str(self.port),
             "--n_ctx", str(n_ctx), "--n_threads", str(n_threads), "--verbose", "False"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_ready(self, timeout_s: float = 180.0) -> LlamaCppServer:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self._process.returncode}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"llama_cpp.server not ready within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()  # type: ignore[union-attr]

    def __enter__(self) -> LlamaCppServer:
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RecordedServer:
    """Chat completions from `solutions` (task id -> program), each after
    `delay_s`, at most `slots` at once (more wait for a slot). The task id is
    read from the prompt's `# task: ID` line, which the bench's requests carry.
    `stop()` closes the port (connections refused); `start()` opens it again."""

    def __init__(self, solutions: dict[str, str], delay_s: float, slots: int,
                 port: int | None = None) -> None:  # fmt: skip
        self.solutions = solutions
        self.delay_s = delay_s
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._slots = threading.Semaphore(slots)
        self._server: ThreadingHTTPServer | None = None
        self.n_calls = 0

    def start(self) -> RecordedServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._reply(200, {"data": [{"id": "recorded"}]})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length))
                with owner._slots:
                    time.sleep(owner.delay_s)
                    owner.n_calls += 1
                    text = " ".join(m["content"] for m in body.get("messages", []))
                    task = text.split("# task: ", 1)[-1].split()[0] if "# task: " in text else ""
                    code = owner.solutions.get(task, "")
                    n = int(body.get("n", 1))
                    self._reply(200, {
                        "choices": [{"index": i, "finish_reason": "stop", "message": {
                            "role": "assistant", "content": f"```python\n{code}\n```"}}
                            for i in range(n)],
                        "usage": {"prompt_tokens": len(text) // 4,
                                  "completion_tokens": n * (len(code) // 4 + 1)},
                    })  # fmt: skip

            def _reply(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> RecordedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
