"""Any OpenAI-compatible server: `vllm serve`, SGLang, TGI, llama.cpp's server,
a hosted API.

Built on `httpx` rather than the `openai` package: the cascade needs to decide
for itself what a failure is (a 400 is the request's fault and must not open
the circuit breaker; a 503 is the server's), to honour `Retry-After` within the
request's deadline, and to fall back to concurrent calls where a server ignores
`n`; `openai` retries on its own terms and hides most of that. httpx is what
`openai` itself is built on.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import httpx
from pydantic import Field

from streamcascade.backends.base import (
    BackendError,
    BackendSettings,
    Completion,
    GenerationParams,
    Prompt,
)
from streamcascade.backends.guard import deadline_remaining_s
from streamcascade.backends.registry import BuildContext

log = logging.getLogger(__name__)

# Status codes that say "this request is malformed or too long": passing it to
# the same server again, or counting it against the server, would be wrong.
_REQUEST_FAULTS = frozenset({400, 413, 422})
_RETRYABLE = frozenset({408, 409, 425, 429})


class OpenAIBackendConfig(BackendSettings):
    """A model behind an OpenAI-compatible HTTP API.

    Example (a `vllm serve Qwen/Qwen2.5-Coder-32B-Instruct` on a GPU host)::

        backend:
          kind: openai
          base_url: http://gpu-host:8000/v1
          model: Qwen/Qwen2.5-Coder-32B-Instruct
          prefill: true
    """

    kind: Literal["openai"] = "openai"
    base_url: str = Field(description="Up to and including /v1, e.g. http://127.0.0.1:8000/v1.")
    model: str = Field(description="The model name the server expects.")
    name: str | None = Field(default=None, description="Model name to report; default `model`.")
    api_key_env: str | None = Field(
        default=None,
        description="The environment variable holding the API key (the key itself is never "
        "written in a config, logged or put in an answer).",
    )
    endpoint: Literal["chat", "completions"] = Field(
        default="chat",
        description="chat: /chat/completions with the messages; completions: /completions "
        "with the messages' text joined (for base models).",
    )
    prefill: bool = Field(
        default=False,
        description="The server continues a final assistant message (vLLM's "
        "`continue_final_message`), so an answer can be started for the model.",
    )
    server_n: bool = Field(
        default=True,
        description="Ask the server for n completions in one call; any it does not return "
        "are asked for by concurrent calls with their own seeds.",
    )
    max_concurrency: int = Field(default=8, ge=1, description="Calls in flight, at most.")
    timeout_s: float = Field(default=120.0, gt=0, description="One HTTP call, at most.")
    max_retries: int = Field(default=4, ge=0, description="On connection errors, 429 and 5xx.")
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="Merged into every request body (server-specific)."
    )


class RequestRejected(ValueError):
    """The server refused this request as malformed or too long (HTTP 400/413/422):
    the request's fault, not the server's."""


class OpenAIBackend:
    """Implements `Backend` over HTTP. Thread-safe: a level step's prompts go
    out as concurrent calls, at most `max_concurrency` at once."""

    def __init__(
        self,
        config: OpenAIBackendConfig,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.config = config
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=config.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s, connect=min(10.0, config.timeout_s)),
            transport=transport,
            limits=httpx.Limits(max_connections=config.max_concurrency),
        )
        self._pool = ThreadPoolExecutor(config.max_concurrency, thread_name_prefix="openai")
        self._rng = random.Random()
        self._rng_lock = threading.Lock()
        self.n_retries = 0
        self._n_missing_noted = False

    @property
    def model_name(self) -> str:
        return self.config.name or self.config.model

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def generate(self, prompts: list[Prompt], params: GenerationParams) -> list[list[Completion]]:
        deadline_s = deadline_remaining_s()
        stop_by = None if deadline_s is None else time.monotonic() + deadline_s
        first_n = params.n if self.config.server_n else 1
        firsts = [self._pool.submit(self._call, p, params, first_n, 0, stop_by) for p in prompts]
        results = [future.result() for future in firsts]
        # Whatever the server did not return (it ignored n, or server_n is off)
        # is asked for one sample per call, each with its own seed.
        extra = {
            (i, j): self._pool.submit(self._call, prompt, params, 1, j, stop_by)
            for i, prompt in enumerate(prompts)
            for j in range(len(results[i]), params.n)
        }
        if extra and self.config.server_n and not self._n_missing_noted:
            self._n_missing_noted = True
            log.info(
                "%s returned fewer than n choices: the rest are separate calls", self.model_name
            )
        for (i, _), future in sorted(extra.items()):
            results[i].extend(future.result())
        return [r[: params.n] for r in results]

    # -- one HTTP call ---------------------------------------------------------------

    def _body(self, prompt: Prompt, params: GenerationParams, n: int, seed: int) -> dict[str, Any]:
        prefill = bool(prompt.assistant_prefix) and self.config.prefill
        stop = list(params.stop)
        if prompt.assistant_prefix and not prefill:
            # The model writes its own opening fence: a stop on a fence would end
            # the answer before it began.
            stop = [s for s in stop if "```" not in s]
        body: dict[str, Any] = {
            "model": self.config.model,
            "n": n,
            "temperature": params.temperature,
            "max_tokens": params.max_tokens,
            "seed": seed,
        }
        if params.temperature > 0:
            body["top_p"] = params.top_p
        if stop:
            body["stop"] = stop
        messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
        if self.config.endpoint == "chat":
            if prefill:
                messages.append({"role": "assistant", "content": prompt.assistant_prefix})
                body["continue_final_message"] = True
                body["add_generation_prompt"] = False
            body["messages"] = messages
        else:
            text = "\n\n".join(m["content"] for m in messages)
            body["prompt"] = text + ("\n\n" + prompt.assistant_prefix if prefill else "")
        body.update(self.config.extra_body)
        return body

    def _call(
        self,
        prompt: Prompt,
        params: GenerationParams,
        n: int,
        offset: int,
        stop_by: float | None,
    ) -> list[Completion]:
        body = self._body(prompt, params, n, params.seed + offset)
        path = "chat/completions" if self.config.endpoint == "chat" else "completions"
        started = time.perf_counter()
        response = self._post(path, body, stop_by)
        seconds = time.perf_counter() - started
        return self._completions(prompt, response, seconds, n)

    def _post(self, path: str, body: dict[str, Any], stop_by: float | None) -> dict[str, Any]:
        config = self.config
        last_error = ""
        for attempt in range(config.max_retries + 1):
            timeout_s = config.timeout_s
            if stop_by is not None:
                timeout_s = min(timeout_s, stop_by - time.monotonic())
                if timeout_s <= 0:
                    break
            retry_after_s: float | None = None
            try:
                response = self._client.post(path, json=body, timeout=timeout_s)
            except httpx.TransportError as error:
                last_error = f"{type(error).__name__}: {error}"
            else:
                status = response.status_code
                if status == 200:
                    try:
                        parsed: dict[str, Any] = response.json()
                    except ValueError:
                        raise BackendError(f"{self.model_name}: the answer is not JSON") from None
                    return parsed
                detail = response.text[:300]
                if status in _REQUEST_FAULTS:
                    raise RequestRejected(f"{self.model_name}: HTTP {status}: {detail}")
                last_error = f"HTTP {status}: {detail}"
                if status not in _RETRYABLE and status < 500:
                    raise BackendError(f"{self.model_name}: {last_error}")
                retry_after_s = _retry_after_s(response.headers.get("retry-after"))
            if attempt == config.max_retries:
                break
            with self._rng_lock:
                jitter = 0.5 + self._rng.random() / 2
            pause_s = min(config.backoff_max_s, config.backoff_initial_s * 2**attempt) * jitter
            if retry_after_s is not None:
                pause_s = max(pause_s, retry_after_s)
            if stop_by is not None and time.monotonic() + pause_s >= stop_by:
                break
            self.n_retries += 1
            log.debug("%s: %s; retry %d in %.2f s", self.model_name, last_error, attempt + 1,
                      pause_s)  # fmt: skip
            time.sleep(pause_s)
        raise BackendError(f"{self.model_name}: {last_error or 'the deadline passed'}")

    def _completions(
        self, prompt: Prompt, response: dict[str, Any], seconds: float, n: int
    ) -> list[Completion]:
        try:
            choices = sorted(response["choices"], key=lambda c: int(c.get("index", 0)))
        except (KeyError, TypeError, ValueError):
            raise BackendError(f"{self.model_name}: an answer without choices") from None
        prefix = prompt.assistant_prefix if self.config.prefill else ""
        texts = []
        for choice in choices[:n]:
            if self.config.endpoint == "chat":
                text = (choice.get("message") or {}).get("content") or ""
            else:
                text = choice.get("text") or ""
            texts.append(prefix + text if prefix and not text.startswith(prefix) else text)
        usage = response.get("usage") or {}
        tokens_in = int(usage.get("prompt_tokens") or 0)
        # Usage covers all choices of the call: the prompt counts once, the
        # generated tokens are shared out evenly.
        tokens_out = int(usage.get("completion_tokens") or 0)
        share, rest = divmod(tokens_out, max(1, len(texts)))
        return [
            Completion(
                text=text,
                tokens_in=tokens_in if i == 0 else 0,
                tokens_out=share + (1 if i < rest else 0),
                seconds=seconds / max(1, len(texts)),
                finish_reason=str(choices[i].get("finish_reason") or "stop"),
            )
            for i, text in enumerate(texts)
        ]


def _retry_after_s(value: str | None) -> float | None:
    """`Retry-After` in seconds, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIPlugin:
    """Entry point `openai`."""

    config_model = OpenAIBackendConfig

    def build(self, config: OpenAIBackendConfig, context: BuildContext) -> OpenAIBackend:
        api_key = None
        if config.api_key_env is not None:
            api_key = context.secret(config.api_key_env)
            if api_key is None:
                raise BackendError(
                    f"{config.model}: the environment variable {config.api_key_env} is not set"
                )
        return OpenAIBackend(config, api_key=api_key)


PLUGIN = OpenAIPlugin()
