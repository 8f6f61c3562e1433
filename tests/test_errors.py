"""User mistakes, as a user makes them: each ends in one or two lines that
name the file, field or address, with the exit code of its kind, before any
model loads; `--debug` shows the traceback."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from streamcascade.cli import main
from streamcascade.errors import EXIT_INPUT, EXIT_INTERNAL, EXIT_UNAVAILABLE, EXIT_USAGE
from streamcascade.learning.snapshots import SnapshotStore


def _error(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The lines the user sees on stderr, logs left out."""
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if " INFO " not in line and line.strip()]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed once the block ends


def test_config_mistakes_name_the_file_the_line_and_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text("levels:\n  - name: small\n    backend: {kind: replay, format: ladder, "
                    "path: x.jsonl}\n    thresold: 1.0\n")  # fmt: skip
    assert main(["run", "--config", str(typo)]) == EXIT_INPUT
    lines = _error(capsys)
    assert lines[0].startswith(f"error: {typo}: line 4, levels.0.thresold: Extra inputs")
    assert len(lines) == 2 and lines[1].startswith("hint: ")

    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("levels: [\n  - name: x\n")
    assert main(["run", "--config", str(bad_yaml)]) == EXIT_INPUT
    assert _error(capsys)[0].startswith(f"error: {bad_yaml}: not valid YAML: line 2, column 3")

    wrong_type = tmp_path / "type.yaml"
    wrong_type.write_text(typo.read_text().replace("thresold: 1.0", "threshold: high"))
    assert main(["run", "--config", str(wrong_type)]) == EXIT_INPUT
    assert "line 4, levels.0.threshold: Input should be a valid number" in _error(capsys)[0]

    for content, expected in (("", "expected a mapping"), ("levels: []", "levels: List should")):
        other = tmp_path / "other.yaml"
        other.write_text(content)
        assert main(["run", "--config", str(other)]) == EXIT_INPUT
        assert expected in _error(capsys)[0]

    assert main(["run", "--config", str(tmp_path / "nope.yaml")]) == EXIT_INPUT
    assert _error(capsys)[0] == f"error: config file not found: {tmp_path / 'nope.yaml'}"
    assert main(["run", "--config", str(tmp_path)]) == EXIT_INPUT
    assert "is a directory" in _error(capsys)[0]


def test_backend_mistakes_are_found_before_any_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("levels:\n  - name: small\n    backend: {kind: tgi}\n")
    assert main(["run", "--config", str(config)]) == EXIT_INPUT
    assert "unknown backend kind 'tgi'; installed: " in _error(capsys)[0]

    config.write_text("levels:\n  - name: small\n    backend: {kind: llamacpp, model: q-9000b}\n")
    assert main(["run", "--config", str(config)]) == EXIT_INPUT
    assert _error(capsys)[0].startswith(
        "error: level 'small': model 'q-9000b' is neither a .gguf file, nor hf:OWNER/REPO/FILE.gguf, nor a known model name"
    )

    missing = tmp_path / "gone.jsonl"
    config.write_text(
        f"levels:\n  - name: small\n    backend: {{kind: replay, format: ladder, path: {missing}}}\n"
    )
    assert main(["run", "--config", str(config)]) == EXIT_INPUT
    assert (
        _error(capsys)[0]
        == f"error: level 'small': replay backend: {missing}: no such file or directory"
    )

    # Offline, a model not in the cache: no download is tried, and the message
    # says which file goes where.
    monkeypatch.setenv("STREAMCASCADE_OFFLINE", "1")
    monkeypatch.setenv("STREAMCASCADE_MODEL_CACHE", str(tmp_path / "cache"))
    assert main(["run", "--limit", "1"]) == EXIT_UNAVAILABLE
    line = _error(capsys)[0]
    assert "is not in the cache and downloads are off (offline): put " in line
    assert str(tmp_path / "cache" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") in line
    assert main(["models", "qwen2.5-coder-0.5b-instruct-q4_k_m"]) == EXIT_UNAVAILABLE
    assert main(["models", "q-9000b"]) == EXIT_INPUT


def test_input_and_output_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = ["run", "--config", str(_replay_only(tmp_path)), "--no-progress"]
    assert main([*run, "--input", str(tmp_path / "nope.jsonl")]) == EXIT_INPUT
    assert _error(capsys) == [f"error: input file not found: {tmp_path / 'nope.jsonl'}"]
    assert main([*run, "--input", str(tmp_path)]) == EXIT_INPUT
    assert "is a directory" in _error(capsys)[0]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main([*run, "--input", str(empty), "--out", "/nope/dir/a.jsonl"]) == EXIT_INPUT
    lines = _error(capsys)
    assert lines == ["error: --out file /nope/dir/a.jsonl: directory /nope/dir does not exist",
                     "hint: mkdir -p /nope/dir"]  # fmt: skip
    # Lines that are not requests are dead letters, never a crash of the run.
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(b"\xff\xfe not utf-8\n{not json\n")
    assert main([*run, "--input", str(garbage)]) == 0
    assert "0 answered, 2 dead letters" in capsys.readouterr().err


def test_command_line_mistakes_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["runn"], ["run", "--limt", "3"], ["run", "--limit", "abc"]):
        with pytest.raises(SystemExit) as bad:
            main(argv)
        assert bad.value.code == EXIT_USAGE
    capsys.readouterr()
    assert main(["bench", "--learn", "--ladder", str(tmp_path)]) == EXIT_USAGE
    assert _error(capsys)[0].startswith("error: --ladder needs --models")
    assert main(["bench", "--learn", "--ladder", str(tmp_path), "--models", "a=oops"]) == EXIT_INPUT


def test_state_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["state", "--state-dir", str(tmp_path / "nope")]) == EXIT_INPUT
    assert _error(capsys) == [f"error: --state-dir {tmp_path / 'nope'}: no such directory"]
    assert main(["state", "--state-dir", str(tmp_path), "--rollback", "3"]) == EXIT_INPUT
    assert _error(capsys)[-1] == f"error: no snapshot 3 to roll back to in {tmp_path}"
    store = SnapshotStore(tmp_path)
    store.save({"step": 1})
    assert main(["state", "--state-dir", str(tmp_path), "--rollback", "3"]) == EXIT_INPUT
    assert _error(capsys)[0] == f"error: no snapshot 3 in {tmp_path} (have: 1)"
    # A latest snapshot that is not JSON (a disk that filled mid-write) is
    # skipped with a warning: the one before is restored.
    (tmp_path / "snapshot-00000002.json").write_text("{not json")
    assert store.load() == {"step": 1}


def test_no_broker_is_one_line_in_seconds_not_a_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = tmp_path / "r.jsonl"
    requests.write_text(json.dumps({"id": "a", "prompt": "p", "entry_point": "f"}) + "\n")
    address = f"127.0.0.1:{_closed_port()}"
    for argv in (
        ["feed", "--bootstrap-servers", address, "--input", str(requests)],
        ["follow", "--bootstrap-servers", address, "--count", "1"],
        ["serve", "--bootstrap-servers", address, "--config", str(_replay_only(tmp_path))],
    ):
        assert main(argv) == EXIT_UNAVAILABLE
        lines = _error(capsys)
        assert lines[0].startswith(f"error: no Kafka broker reachable at {address}: ")
        assert lines[1].startswith("hint: start a local broker with `streamcascade kafka`")


def _replay_only(tmp_path: Path) -> Path:
    recording = tmp_path / "top.jsonl"
    recording.write_text("")
    config = tmp_path / "kafka.yaml"
    config.write_text(
        f"levels:\n  - name: top\n    backend: {{kind: replay, format: ladder, path: {recording}}}\n"
        "    threshold: 0\n"
    )
    return config


def test_a_bug_is_one_line_and_debug_shows_its_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import streamcascade.cli.stream as cli

    def broken(_: object) -> int:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "cmd_state", broken)
    assert main(["state", "--state-dir", "."]) == EXIT_INTERNAL
    assert _error(capsys) == [
        "error: internal error: ZeroDivisionError: division by zero",
        "hint: run again with --debug for the traceback, and please report it",
    ]
    with pytest.raises(ZeroDivisionError):
        main(["state", "--state-dir", ".", "--debug"])


def test_json_logs_are_one_object_per_line_whatever_the_message_holds() -> None:
    import logging

    from streamcascade.cli import JsonLogFormatter, build_parser

    record = logging.LogRecord("streamcascade", logging.WARNING, __file__, 1,
                               "request %s failed", ("id\nINFO forged line",), None)  # fmt: skip
    line = JsonLogFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "WARNING"
    assert entry["message"] == "request id\nINFO forged line failed"
    # Accepted before or after the command, like --debug.
    assert build_parser().parse_args(["serve", "--log-json"]).log_json is True
    assert build_parser().parse_args(["--log-json", "state", "--state-dir", "."]).log_json is True
