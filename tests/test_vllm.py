"""The vllm backend in-process. Runs only where vllm is installed (the `gpu`
extra) and a CUDA device is visible; skips cleanly elsewhere. The model is
STREAMCASCADE_VLLM_MODEL (a Hugging Face id or a local directory), default
Qwen/Qwen2.5-Coder-0.5B-Instruct."""

from __future__ import annotations

import importlib.util
import os

import pytest

from streamcascade.backends import ChatMessage, GenerationParams, Prompt
from streamcascade.config import LevelConfig


def _gpu_ready() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install -e '.[gpu]')"
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def test_the_vllm_kind_validates_without_vllm() -> None:
    backend = {"kind": "vllm", "model": "Qwen/Qwen2.5-Coder-7B-Instruct", "tensor_parallel_size": 2}
    level = LevelConfig.model_validate({"name": "big", "backend": backend})
    assert level.backend.kind == "vllm"


@pytest.mark.slow
@pytest.mark.real_model
def test_one_generate_call_batches_every_prompt_on_the_gpu() -> None:
    why = _gpu_ready()
    if why is not None:
        pytest.skip(why)
    from streamcascade.backends.vllm_backend import VLLMBackend, VLLMBackendConfig

    model = os.environ.get("STREAMCASCADE_VLLM_MODEL", "Qwen/Qwen2.5-Coder-0.5B-Instruct")
    backend = VLLMBackend(
        VLLMBackendConfig(model=model, gpu_memory_utilization=0.5, max_model_len=4096)
    )
    names = ["add", "maximum", "is_even", "reverse"]
    prompts = [
        Prompt(name, "solutions", (ChatMessage("user", f"Write a Python function {name}."),),
               assistant_prefix=f"```python\ndef {name}(" if i % 2 else "")
        for i, name in enumerate(names)
    ]  # fmt: skip
    out = backend.generate(prompts, GenerationParams(n=3, temperature=0.8, max_tokens=128))
    assert [len(c) for c in out] == [3, 3, 3, 3]
    for name, completions in zip(names, out, strict=True):
        assert all(f"def {name}" in c.text for c in completions)
        assert completions[0].tokens_in > 0 and all(c.tokens_out > 0 for c in completions)
    # The prefilled prompts' answers start with what the cascade started.
    assert all(c.text.startswith("```python\ndef maximum(") for c in out[1])
