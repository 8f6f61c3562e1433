from pathlib import Path

import pytest
from pydantic import ValidationError

from streamcascade.backends.llamacpp import LlamaCppBackendConfig
from streamcascade.config import AppConfig, load_config
from streamcascade.schemas import CodeRequest


def test_default_config_is_two_real_models() -> None:
    config = load_config()
    assert [level.name for level in config.levels] == ["qwen-0.5b", "qwen-1.5b"]
    assert all(isinstance(level.backend, LlamaCppBackendConfig) for level in config.levels)
    assert config.levels[0].threshold > config.levels[1].threshold


def test_config_rejects_unknown_fields(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "levels:\n  - name: a\n    backend: {kind: llamacpp, model: m}\n    k_solution: 3\n"
    )
    from streamcascade.errors import InputError

    with pytest.raises(InputError, match=r"line 4, levels\.0\.k_solution: Extra inputs"):
        load_config(path)


def test_config_rejects_duplicate_level_names() -> None:
    level = {"name": "a", "backend": {"kind": "llamacpp", "model": "m"}}
    with pytest.raises(ValidationError, match="unique"):
        AppConfig.model_validate({"levels": [level, level]})


def test_environment_overrides_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMCASCADE_MODEL_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("STREAMCASCADE_CPU_THREADS", "2")
    config = load_config()
    assert config.model_cache_dir == tmp_path
    assert config.allow_hub_download is False and config.offline is True
    # A container's CPU limit: in-process models use that many threads.
    assert config.cpu_threads == 2
    from streamcascade.cascade.engine import pool_for

    assert pool_for(config)._context.cpu_threads == 2
    monkeypatch.setenv("STREAMCASCADE_CPU_THREADS", "two")
    from streamcascade.errors import InputError

    with pytest.raises(InputError, match="STREAMCASCADE_CPU_THREADS='two'"):
        load_config()


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    from streamcascade.errors import InputError

    with pytest.raises(InputError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_request_validation() -> None:
    from streamcascade.tasks import check_request

    # The schema checks the structure; the request's kind checks what it asks.
    for name in ("not valid", "class", ""):
        with pytest.raises(ValueError, match="needs entry_point"):
            check_request(CodeRequest(id="x", prompt="def f(): ...", entry_point=name))
    with pytest.raises(ValidationError):
        CodeRequest(id="", prompt="p", entry_point="f")
    with pytest.raises(ValueError, match="unknown task kind 'sql'; installed: "):
        check_request(CodeRequest(id="x", prompt="p", kind="sql"))
    # Unknown fields are kept, not refused: they travel to the answer.
    request = CodeRequest.model_validate(
        {"id": "x", "prompt": "p", "entry_point": "f", "trace_id": "t-1", "schema_version": 3}
    )
    assert request.metadata == {"trace_id": "t-1"} and request.kind == "function"
    assert CodeRequest(id="y", prompt="p", label_set=["a", "b"]).kind == "label"


def test_shipped_configs_load() -> None:
    configs = Path(__file__).resolve().parents[1] / "configs"
    for path in sorted(configs.glob("*.yaml")):
        config = load_config(path)
        assert config.levels, path
    learning = load_config(configs / "learning.yaml").learning
    assert learning.enabled and learning.policy == "router" and not learning.memory.enabled
    assert learning.router.top_calls_per_wrong_answer == 3.3
    # The service learns with the router; the embedded default does not learn.
    service = load_config(configs / "kafka.yaml").learning
    assert service.enabled and service.policy == "router" and not service.memory.enabled
    assert not load_config(None).learning.enabled
    from streamcascade.ladder import parse_ladder_spec

    for path in sorted((configs / "ladders").glob("*.yaml")):
        assert len(parse_ladder_spec(str(path)).models) >= 2, path


def test_learning_config_takes_one_budget() -> None:
    from streamcascade.config import LearningConfig

    with pytest.raises(ValidationError, match="not both"):
        LearningConfig(budget_usd_per_request=0.01, budget_top_share=0.5)


def test_a_config_typo_is_one_line_naming_the_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamcascade.cli import main

    learning = Path(__file__).resolve().parents[1] / "configs" / "learning.yaml"
    typo = tmp_path / "typo.yaml"
    typo.write_text(learning.read_text().replace("policy: router", "policy: routr"))
    assert main(["run", "--config", str(typo), "--limit", "1"]) == 3  # an input file's fault
    err = capsys.readouterr().err.strip().splitlines()
    line = 1 + learning.read_text().splitlines().index("  policy: router")
    assert err[0] == (
        f"error: {typo}: line {line}, learning.policy: Value error, "
        "unknown policy 'routr': installed are hedge, router"
    )
    assert len(err) == 2 and err[1].startswith("hint: ")
