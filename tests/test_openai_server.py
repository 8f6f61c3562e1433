"""The openai backend against a real OpenAI-compatible server: llama-cpp-python's
own (`python -m llama_cpp.server`) on 127.0.0.1 with the Qwen 1.5B model, at the
top of a cascade whose lower level is the in-process 0.5B, through `run` and
through the Kafka service."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamcascade.backends import ChatMessage, GenerationParams, Prompt
from streamcascade.backends.openai_http import OpenAIBackend, OpenAIBackendConfig
from streamcascade.benchtools.servers import LlamaCppServer
from streamcascade.cascade.build import build_engine
from streamcascade.config import AppConfig, load_config
from streamcascade.models import resolve_model
from streamcascade.sandbox import Sandbox
from streamcascade.service.broker import LocalKafka
from streamcascade.service.tools import feed, follow
from streamcascade.service.worker import CascadeService, ensure_topics

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

SMALL, LARGE = "qwen2.5-coder-0.5b-instruct-q4_k_m", "qwen2.5-coder-1.5b-instruct-q4_k_m"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppServer]:
    default = load_config()
    path = resolve_model(LARGE, default.model_cache_dir, default.allow_hub_download)
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    with LlamaCppServer(path, LARGE, log_path=log_path) as running:
        yield running


def cascade(server: LlamaCppServer, **extra: Any) -> dict[str, Any]:
    """0.5B in-process, then the 1.5B behind the server. The small level has no
    tests to pass (none visible, none generated), so every request climbs."""
    return {
        "levels": [
            {"name": "small", "backend": {"kind": "llamacpp", "model": SMALL},
             "t_test_generations": 0, "max_tokens": 256, "threshold": 1.0},
            {"name": "large-http", "backend": {"kind": "openai", "base_url": server.base_url,
                                              "model": LARGE, "max_concurrency": 2},
             "t_test_generations": 0, "max_tokens": 256, "threshold": 0.0},
        ],
        **extra,
    }  # fmt: skip


def requests(n: int) -> list[dict[str, Any]]:
    names = ["add", "maximum", "is_even", "reverse"]
    docs = ["the sum of a and b", "the larger of a and b", "whether a is even", "a reversed"]
    args = ["a, b", "a, b", "a", "a"]
    return [
        {"id": f"q{i}", "entry_point": names[i],
         "prompt": f'def {names[i]}({args[i]}):\n    """Return {docs[i]}."""\n'}
        for i in range(n)
    ]  # fmt: skip


def test_the_server_answers_a_batch_with_usage(server: LlamaCppServer) -> None:
    backend = OpenAIBackend(OpenAIBackendConfig(base_url=server.base_url, model=LARGE))
    prompt = Prompt("p", "solutions", (ChatMessage("user", "Write a Python function add(a, b)."),))
    out = backend.generate([prompt, prompt], GenerationParams(n=2, max_tokens=64, seed=3))
    assert [len(c) for c in out] == [2, 2]
    assert all("def add" in c.text for c in out[0])
    assert out[0][0].tokens_in > 5 and all(c.tokens_out > 0 for c in out[0])
    backend.close()


def test_run_climbs_to_the_server(server: LlamaCppServer, tmp_path: Path) -> None:
    config_path = tmp_path / "cascade.yaml"
    config_path.write_text(yaml.safe_dump(cascade(server)))
    inputs = tmp_path / "requests.jsonl"
    inputs.write_text("".join(json.dumps(r) + "\n" for r in requests(2)))
    out = tmp_path / "answers.jsonl"
    subprocess.run(
        [sys.executable, "-m", "streamcascade.cli", "run", "--config", str(config_path),
         "--input", str(inputs), "--out", str(out), "--no-progress"],
        check=True, timeout=600,
    )  # fmt: skip
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["id"] for a in answers] == ["q0", "q1"]
    assert all(a["level"] == 2 and a["model"] == LARGE for a in answers)
    assert all(
        f"def {r['entry_point']}" in a["code"] for a, r in zip(answers, requests(2), strict=True)
    )
    assert all(a["attempts"][1]["tokens_out"] > 0 for a in answers)


def test_the_kafka_service_climbs_to_the_server(
    server: LlamaCppServer, tmp_path: Path, sandbox: Sandbox
) -> None:
    with LocalKafka(tmp_path / "kafka", partitions=1) as broker:
        raw = cascade(server, kafka={"bootstrap_servers": [broker.bootstrap_servers],
                                     "instance_id": "s0", "partitions": 1})  # fmt: skip
        config = AppConfig.model_validate(raw)
        ensure_topics(config.kafka)
        feed(config.kafka, [json.dumps(r).encode() for r in requests(3)])
        built = build_engine(config, sandbox)
        service = CascadeService(config.kafka, built.engine)
        thread = threading.Thread(target=service.run)
        thread.start()
        try:
            deadline = time.monotonic() + 600
            while service.stats.n_answers + service.stats.n_dead_letters < 3:
                assert time.monotonic() < deadline, service.stats.line()
                time.sleep(0.2)
        finally:
            service.stop()
            thread.join(60)
        answers = [json.loads(r.value or b"") for r in
                   follow(config.kafka, config.kafka.topics.answers, idle_timeout_s=3)]  # fmt: skip
        assert sorted(a["id"] for a in answers) == ["q0", "q1", "q2"]
        assert all(a["level"] == 2 and a["model"] == LARGE for a in answers)
