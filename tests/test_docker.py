"""docker/compose.yaml stays consistent with the image, the configs and the CLI
(no Docker engine runs here, so this is what keeps it valid)."""

from __future__ import annotations

from pathlib import Path

import yaml

from streamcascade.cli import build_parser
from streamcascade.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_compose_file_matches_the_image_configs_and_cli() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"kafka", "streamcascade"}
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:4.")
    environment = kafka["environment"]
    assert "controller" in environment["KAFKA_PROCESS_ROLES"]
    assert all(isinstance(v, str) for v in environment.values())
    app = services["streamcascade"]
    context = (ROOT / "docker" / app["build"]["context"]).resolve()
    assert context == ROOT and (context / app["build"]["dockerfile"]).is_file()
    command = app["command"]
    args = build_parser().parse_args(command)
    assert args.command == "serve"
    # The config it names is shipped in the image (configs/ is copied to /app/configs).
    shipped = ROOT / args.config.removeprefix("/app/")
    assert load_config(shipped).kafka.topics.requests == "code.requests"
    assert args.bootstrap_servers.split(":")[0] == "kafka"
    assert app["depends_on"]["kafka"]["condition"] == "service_healthy"
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert "COPY configs ./configs" in dockerfile and 'ENTRYPOINT ["streamcascade"]' in dockerfile
