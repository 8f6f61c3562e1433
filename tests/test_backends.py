"""Backend plug-ins, the openai backend's HTTP behaviour (scripted with httpx's
MockTransport; the real server is in test_openai_server.py), and the guard:
timeouts, deadlines and the circuit breaker."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import httpx
import pytest

from streamcascade.backends import (
    BackendError,
    BackendPool,
    BackendUnavailable,
    BreakerSettings,
    ChatMessage,
    Completion,
    GenerationParams,
    GuardedBackend,
    Prompt,
    generation_deadline,
    installed_kinds,
)
from streamcascade.backends.openai_http import (
    OpenAIBackend,
    OpenAIBackendConfig,
    RequestRejected,
)
from streamcascade.backends.replay import ReplayBackendConfig
from streamcascade.config import AppConfig, LevelConfig

PROMPT = Prompt(
    request_id="r1",
    purpose="solutions",
    messages=(ChatMessage("user", "Write double(x)."),),
    assistant_prefix="```python\n",
)


def test_builtin_backends_are_entry_points_and_an_unknown_kind_lists_them() -> None:
    assert {"llamacpp", "replay", "openai", "vllm"} <= set(installed_kinds())
    level = LevelConfig.model_validate(
        {"name": "top", "backend": {"kind": "openai", "base_url": "http://h/v1", "model": "m"}}
    )
    assert isinstance(level.backend, OpenAIBackendConfig)
    assert level.model_dump()["backend"]["base_url"] == "http://h/v1"  # dumped whole
    with pytest.raises(ValueError) as error:
        LevelConfig.model_validate({"name": "x", "backend": {"kind": "tgi", "model": "m"}})
    assert "unknown backend kind 'tgi'; installed: " in str(error.value)
    assert "openai" in str(error.value) and "llamacpp" in str(error.value)
    with pytest.raises(ValueError, match="kind 'openai': base_url: Field required"):
        LevelConfig.model_validate({"name": "x", "backend": {"kind": "openai", "model": "m"}})
    with pytest.raises(ValueError, match="n_gpu_layerz"):
        LevelConfig.model_validate(
            {"name": "x", "backend": {"kind": "llamacpp", "model": "m", "n_gpu_layerz": 1}}
        )


def test_the_openai_example_config_validates() -> None:
    from pathlib import Path

    import yaml

    raw = yaml.safe_load((Path(__file__).parents[1] / "configs" / "openai.yaml").read_text())
    config = AppConfig.model_validate(raw)
    assert isinstance(config.levels[-1].backend, OpenAIBackendConfig)


class Server:
    """A scripted OpenAI-compatible endpoint: `replies` are consumed in order
    (status, headers, body); every request body is kept."""

    def __init__(self, replies: list[tuple[int, dict[str, str], Any]] | None = None) -> None:
        self.replies = list(replies or [])
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[httpx.Headers] = []
        self.times: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            body = json.loads(request.content)
            self.bodies.append(body)
            self.headers.append(request.headers)
            self.times.append(time.monotonic())
            if self.replies:
                status, headers, payload = self.replies.pop(0)
            else:
                status, headers, payload = 200, {}, chat_reply(body["n"], body["seed"])
        if isinstance(payload, Exception):
            raise payload
        return httpx.Response(status, headers=headers, json=payload)


def chat_reply(n: int, seed: int = 0) -> dict[str, Any]:
    return {
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": f"def f(): return {seed + i}"},
             "finish_reason": "stop"}
            for i in range(n)
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 7 * n},
    }  # fmt: skip


def backend(server: Server, **fields: Any) -> OpenAIBackend:
    config = OpenAIBackendConfig.model_validate(
        {"base_url": "http://server/v1", "model": "m", "backoff_initial_s": 0.01, **fields}
    )
    return OpenAIBackend(config, api_key="sk-secret-123", transport=httpx.MockTransport(server))


def test_chat_call_with_n_usage_stop_and_key() -> None:
    server = Server()
    out = backend(server).generate(
        [PROMPT, PROMPT], GenerationParams(n=3, temperature=0.8, stop=("\n```", "\nif"), seed=5)
    )
    assert [len(c) for c in out] == [3, 3]
    assert [c.text for c in out[0]] == [f"def f(): return {5 + i}" for i in range(3)]
    # The prompt counts once per call; generated tokens are shared out.
    assert [(c.tokens_in, c.tokens_out) for c in out[0]] == [(20, 7), (0, 7), (0, 7)]
    body = server.bodies[0]
    assert body["n"] == 3 and body["model"] == "m" and body["top_p"] == 0.95
    # Without prefill the model writes its own fence: a fence stop would end it at once.
    assert body["stop"] == ["\nif"] and body["messages"][-1]["role"] == "user"
    assert server.headers[0]["authorization"] == "Bearer sk-secret-123"


def test_prefill_continues_the_assistant_message() -> None:
    server = Server([(200, {}, {"choices": [{"index": 0, "message": {"content": "x = 1\n"}}]})])
    out = backend(server, prefill=True).generate([PROMPT], GenerationParams(stop=("\n```",)))
    assert out[0][0].text == "```python\nx = 1\n"
    body = server.bodies[0]
    assert body["messages"][-1] == {"role": "assistant", "content": "```python\n"}
    assert body["continue_final_message"] is True and body["stop"] == ["\n```"]


def test_a_server_that_ignores_n_gets_one_call_per_missing_sample() -> None:
    server = Server([(200, {}, chat_reply(1, seed=0))])
    out = backend(server).generate([PROMPT], GenerationParams(n=3, seed=10))
    assert len(out[0]) == 3
    assert sorted(b["seed"] for b in server.bodies[1:]) == [11, 12]
    assert all(b["n"] == 1 for b in server.bodies[1:])


def test_429_honours_retry_after_and_5xx_and_connection_errors_are_retried() -> None:
    server = Server(
        [
            (429, {"Retry-After": "0.3"}, {"error": "slow down"}),
            (503, {}, {"error": "busy"}),
            (200, {}, httpx.ConnectError("refused")),
        ]
    )
    client = backend(server)
    out = client.generate([PROMPT], GenerationParams())
    assert out[0][0].text.startswith("def f()")
    assert client.n_retries == 3 and len(server.bodies) == 4
    assert server.times[1] - server.times[0] >= 0.3


def test_a_malformed_request_is_the_requests_fault_and_auth_failure_the_servers() -> None:
    with pytest.raises(RequestRejected, match="HTTP 400"):
        backend(Server([(400, {}, {"error": "too long"})])).generate([PROMPT], GenerationParams())
    with pytest.raises(BackendError, match="HTTP 401"):
        backend(Server([(401, {}, {"error": "bad key"})])).generate([PROMPT], GenerationParams())


def test_retries_stop_at_the_deadline_and_the_key_is_never_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = Server([(503, {}, {"error": "down"})] * 50)
    client = backend(server, backoff_initial_s=0.2)
    started = time.monotonic()
    # The deadline reaches the backend through the guard's context: the client
    # stops retrying and raises the last 503, or (on a loaded machine) the
    # guard's own watchdog answers first; either way nothing waits past it.
    with (generation_deadline(time.monotonic() + 0.5),
          pytest.raises(BackendError, match=r"503|no answer within 0\.5 s")):  # fmt: skip
        GuardedBackend(lambda: client, "openai:m").generate([PROMPT], GenerationParams())
    assert time.monotonic() - started < 1.5
    assert "sk-secret-123" not in caplog.text


class Flaky:
    """Fails (BackendError) or hangs as told; counts calls."""

    def __init__(self) -> None:
        self.fail = False
        self.hang_s = 0.0
        self.calls = 0

    @property
    def model_name(self) -> str:
        return "flaky"

    def generate(self, prompts: list[Prompt], params: GenerationParams) -> list[list[Completion]]:
        self.calls += 1
        if self.hang_s:
            time.sleep(self.hang_s)
        if self.fail:
            raise BackendError("flaky: down")
        return [[Completion("ok", 1, 1, 0.0)] for _ in prompts]


def test_the_breaker_opens_refuses_then_probes_and_closes() -> None:
    inner = Flaky()
    guard = GuardedBackend(lambda: inner, "flaky", BreakerSettings(2, cooldown_s=0.3))
    inner.fail = True
    for _ in range(2):
        with pytest.raises(BackendError):
            guard.generate([PROMPT], GenerationParams())
    assert guard.breaker.state == "open"
    with pytest.raises(BackendUnavailable):
        guard.generate([PROMPT], GenerationParams())
    assert inner.calls == 2  # refused without a call
    time.sleep(0.35)
    inner.fail = False
    assert guard.generate([PROMPT], GenerationParams())[0][0].text == "ok"  # the probe
    assert guard.breaker.state == "closed" and guard.breaker.n_opened == 1


def test_a_hung_backend_times_out_and_the_model_loads_on_first_use() -> None:
    built: list[Flaky] = []

    def build() -> Flaky:
        built.append(Flaky())
        built[-1].hang_s = 5.0
        return built[-1]

    guard = GuardedBackend(build, "hung", call_timeout_s=0.2)
    assert not built and not guard.loaded
    started = time.monotonic()
    with pytest.raises(BackendError, match="no answer within"):
        guard.generate([PROMPT], GenerationParams())
    assert time.monotonic() - started < 1.0 and len(built) == 1


def test_building_a_backend_is_not_timed_as_a_call() -> None:
    """A first run fetches and loads its models inside the first call: that
    took minutes on a fresh machine and must not count against the call's
    timeout (it turned every request of the first run into a dead letter)."""

    def build() -> Flaky:
        time.sleep(0.5)  # a download, then a load
        return Flaky()

    guard = GuardedBackend(build, "slow-to-load", call_timeout_s=0.2)
    assert guard.generate([PROMPT], GenerationParams())[0][0].text == "ok"
    assert guard.n_failures == 0 and guard.breaker.state == "closed"


def test_the_pool_builds_each_backend_once_and_lazily(tmp_path: Any) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"task_id": "r1", "solution": "def f(): pass"}) + "\n")
    pool = BackendPool()
    config = ReplayBackendConfig(format="ladder", path=path, name="rec")
    guard = pool.get(config)
    assert pool.get(config) is guard and not guard.loaded
    assert guard.model_name == "rec" and guard.loaded


def test_a_one_prompt_backend_gets_one_call_per_prompt_each_with_its_timeout() -> None:
    inner = Flaky()
    inner.hang_s = 0.15  # each call alone fits the timeout; three in one would not
    guard = GuardedBackend(lambda: inner, "one-at-a-time", call_timeout_s=0.4, prompts_per_call=1)
    out = guard.generate([PROMPT, PROMPT, PROMPT], GenerationParams())
    assert len(out) == 3 and inner.calls == 3
    from streamcascade.backends.llamacpp import LlamaCppBackendConfig

    assert LlamaCppBackendConfig(model="m").prompts_per_call() == 1
    assert OpenAIBackendConfig(base_url="http://h/v1", model="m").prompts_per_call() is None
