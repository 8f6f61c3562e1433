"""vLLM in-process, on a GPU (the `gpu` extra): every prompt of a level step goes
to the engine in one `LLM.chat` call, which batches them on the device.

Only importable where vllm is installed; the plug-in imports it when the first
request reaches the level.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from pydantic import Field

from streamcascade.backends.base import BackendSettings, Completion, GenerationParams, Prompt
from streamcascade.backends.registry import BuildContext

log = logging.getLogger(__name__)


class VLLMBackendConfig(BackendSettings):
    """A Hugging Face model (or local directory) loaded by vLLM in this process."""

    kind: Literal["vllm"] = "vllm"
    model: str = Field(description="A Hugging Face repo id or a local model directory.")
    name: str | None = Field(default=None, description="Model name to report; default `model`.")
    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs to shard across.")
    gpu_memory_utilization: float = Field(default=0.85, gt=0, le=1)
    max_model_len: int | None = Field(default=None, ge=256)
    dtype: str = Field(default="auto")
    enforce_eager: bool = Field(
        default=False, description="Skip CUDA graph capture: a faster start, slower decoding."
    )
    seed: int = 0


class VLLMBackend:
    """Implements `Backend`: one `generate` call, one batched engine call per
    kind of prompt (those the cascade starts the answer of, and the others)."""

    def __init__(self, config: VLLMBackendConfig) -> None:
        from vllm import LLM  # lazy: only the gpu extra has it

        started = time.perf_counter()
        kwargs: dict[str, Any] = {
            "model": config.model,
            "tensor_parallel_size": config.tensor_parallel_size,
            "gpu_memory_utilization": config.gpu_memory_utilization,
            "dtype": config.dtype,
            "enforce_eager": config.enforce_eager,
            "seed": config.seed,
        }
        if config.max_model_len is not None:
            kwargs["max_model_len"] = config.max_model_len
        self._llm: Any = LLM(**kwargs)
        self._name = config.name or config.model
        log.info("vllm loaded %s in %.1f s", self._name, time.perf_counter() - started)

    @property
    def model_name(self) -> str:
        return self._name

    def generate(self, prompts: list[Prompt], params: GenerationParams) -> list[list[Completion]]:
        from vllm import SamplingParams

        sampling = SamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p if params.temperature > 0 else 1.0,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            seed=params.seed,
        )
        results: list[list[Completion]] = [[] for _ in prompts]
        for prefilled in (True, False):
            chosen = [i for i, p in enumerate(prompts) if bool(p.assistant_prefix) == prefilled]
            if not chosen:
                continue
            conversations = []
            for i in chosen:
                messages = [{"role": m.role, "content": m.content} for m in prompts[i].messages]
                if prefilled:
                    messages.append({"role": "assistant", "content": prompts[i].assistant_prefix})
                conversations.append(messages)
            started = time.perf_counter()
            outputs = self._llm.chat(
                conversations,
                sampling,
                use_tqdm=False,
                add_generation_prompt=not prefilled,
                continue_final_message=prefilled,
            )
            seconds = (time.perf_counter() - started) / max(1, len(chosen))
            for i, output in zip(chosen, outputs, strict=True):
                prefix = prompts[i].assistant_prefix
                tokens_in = len(output.prompt_token_ids or [])
                results[i] = [
                    Completion(
                        text=prefix + sample.text,
                        tokens_in=tokens_in if j == 0 else 0,
                        tokens_out=len(sample.token_ids),
                        seconds=seconds / max(1, len(output.outputs)),
                        finish_reason=str(sample.finish_reason or "stop"),
                    )
                    for j, sample in enumerate(output.outputs)
                ]
        return results


class VLLMPlugin:
    """Entry point `vllm`."""

    config_model = VLLMBackendConfig

    def build(self, config: VLLMBackendConfig, context: BuildContext) -> VLLMBackend:
        return VLLMBackend(config)


PLUGIN = VLLMPlugin()
