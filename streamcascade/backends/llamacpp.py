"""GGUF models in-process through llama-cpp-python, on the CPU."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from streamcascade.backends.base import BackendSettings, Completion, GenerationParams, Prompt
from streamcascade.backends.registry import BuildContext

log = logging.getLogger(__name__)


class LlamaCppBackendConfig(BackendSettings):
    """A GGUF model run in-process by llama-cpp-python on the CPU (or offloaded to
    a GPU with `n_gpu_layers`, where llama.cpp was built with one)."""

    kind: Literal["llamacpp"] = "llamacpp"
    model: str = Field(description="A model registry name, or a path to a .gguf file.")
    n_ctx: int = Field(default=4096, ge=256)
    n_threads: int | None = Field(default=None, description="CPU threads; None = all cores.")
    n_batch: int = 512
    n_gpu_layers: int = Field(
        default=0, ge=-1, description="Layers offloaded to a GPU; -1 = all, 0 = CPU only."
    )
    seed: int = 0

    def prompts_per_call(self) -> int | None:
        return 1  # one context, one prompt at a time

    def check(self, model_cache_dir: Path | None, offline: bool) -> None:
        from streamcascade.models import check_model

        check_model(self.model, model_cache_dir, offline)


class LlamaCppPlugin:
    """Entry point `llamacpp`."""

    config_model = LlamaCppBackendConfig

    def build(self, config: LlamaCppBackendConfig, context: BuildContext) -> LlamaCppBackend:
        from streamcascade.models import resolve_model

        path = resolve_model(
            config.model, context.model_cache_dir, context.allow_hub, offline=context.offline
        )
        return LlamaCppBackend(
            path,
            model_name=config.model,
            n_ctx=config.n_ctx,
            n_threads=config.n_threads or context.cpu_threads,
            n_batch=config.n_batch,
            n_gpu_layers=config.n_gpu_layers,
            seed=config.seed,
        )


PLUGIN = LlamaCppPlugin()


class LlamaCppBackend:
    """One loaded model. Samples `n` completions per prompt by reseeding; the
    prompt is evaluated once, since llama.cpp reuses its KV cache for a
    repeated prefix, and its tokens are counted once (on the first completion).
    """

    def __init__(
        self,
        model_path: Path,
        model_name: str | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_batch: int = 512,
        n_gpu_layers: int = 0,
        seed: int = 0,
    ) -> None:
        from llama_cpp import Llama  # lazy: a replay-only user never loads the C library

        self._name = model_name or model_path.stem
        started = time.perf_counter()
        self._llm: Any = Llama(
            model_path=str(model_path),
            n_ctx=n_ctx,
            # llama-cpp-python's own default is half the cores; generation is ours to own.
            n_threads=n_threads or os.cpu_count() or 1,
            n_batch=n_batch,
            n_gpu_layers=n_gpu_layers,
            seed=seed,
            verbose=False,
        )
        self._lock = threading.Lock()  # a Llama context is not safe to share across threads
        self._eos_text = ""
        self._formatter = self._chat_formatter()
        log.info("loaded %s in %.1f s", self._name, time.perf_counter() - started)

    def _chat_formatter(self) -> Any:
        """The model's own chat template (from the GGUF), to render a prompt whose
        answer we start ourselves."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self._llm.metadata.get("tokenizer.chat_template")
        if not template:
            return None

        def token_text(token_id: int) -> str:
            return str(self._llm._model.token_get_text(token_id)) if token_id != -1 else ""

        self._eos_text = token_text(self._llm.token_eos())
        return Jinja2ChatFormatter(
            template=template,
            eos_token=self._eos_text,
            bos_token=token_text(self._llm.token_bos()),
            add_generation_prompt=True,
        )

    @property
    def model_name(self) -> str:
        return self._name

    def generate(self, prompts: list[Prompt], params: GenerationParams) -> list[list[Completion]]:
        return [self._generate_one(prompt, params) for prompt in prompts]

    def _generate_one(self, prompt: Prompt, params: GenerationParams) -> list[Completion]:
        messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
        prefill = bool(prompt.assistant_prefix) and self._formatter is not None
        rendered = ""
        if prefill:
            rendered = self._formatter(messages=messages).prompt + prompt.assistant_prefix
        completions: list[Completion] = []
        for i in range(params.n):
            started = time.perf_counter()
            with self._lock:
                if prefill:
                    response = self._llm.create_completion(
                        prompt=rendered,
                        temperature=params.temperature,
                        top_p=params.top_p,
                        max_tokens=params.max_tokens,
                        stop=[self._eos_text, *params.stop],
                        seed=params.seed + i,
                    )
                    choice = response["choices"][0]
                    text = prompt.assistant_prefix + (choice["text"] or "")
                else:
                    response = self._llm.create_chat_completion(
                        messages=messages,
                        temperature=params.temperature,
                        top_p=params.top_p,
                        max_tokens=params.max_tokens,
                        stop=list(params.stop) or None,
                        seed=params.seed + i,
                    )
                    choice = response["choices"][0]
                    text = choice["message"]["content"] or ""
            seconds = time.perf_counter() - started
            usage = response["usage"]
            completions.append(
                Completion(
                    text=text,
                    tokens_in=int(usage["prompt_tokens"]) if i == 0 else 0,
                    tokens_out=int(usage["completion_tokens"]),
                    seconds=seconds,
                    finish_reason=str(choice.get("finish_reason") or "stop"),
                )
            )
        return completions
