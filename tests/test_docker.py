"""docker/compose.yaml stays consistent with the image, the configs and the CLI
(no Docker engine runs here, so this is what keeps it valid)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from streamcascade.cli import build_parser
from streamcascade.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_compose_file_matches_the_image_configs_and_cli() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"kafka", "streamcascade", "prometheus"}
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


def test_the_image_leaves_its_build_tools_behind_and_the_replicas_are_watched() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    app = compose["services"]["streamcascade"]
    args = build_parser().parse_args(app["command"])
    host, port = args.metrics_address.split(":")
    # The healthcheck asks the port serve listens on, inside the container.
    assert host == "0.0.0.0" and f"127.0.0.1:{port}/healthz" in " ".join(app["healthcheck"]["test"])
    # Each replica's CPU limit, and llama.cpp's threads set to match it.
    cpus = app["deploy"]["resources"]["limits"]["cpus"]
    assert app["environment"]["STREAMCASCADE_CPU_THREADS"] == cpus
    # Prometheus scrapes every replica on that port.
    prometheus = compose["services"]["prometheus"]
    [mount] = prometheus["volumes"]
    scrape = yaml.safe_load((ROOT / "docker" / mount.split(":")[0]).read_text())
    [job] = scrape["scrape_configs"]
    assert job["dns_sd_configs"][0] == {"names": ["streamcascade"], "type": "A", "port": int(port)}
    # Two stages: compilers in the first only; the image installs the wheels.
    stages = (ROOT / "docker" / "Dockerfile").read_text().split("\nFROM ")[1:]
    assert len(stages) == 2 and "build-essential" in stages[0]
    assert "build-essential" not in stages[1] and "cmake" not in stages[1]
    assert "COPY --from=build /wheels" in stages[1] and "libgomp1" in stages[1]


@pytest.mark.slow
@pytest.mark.real_model
def test_the_dockerfiles_steps_run_in_a_plain_shell(tmp_path: Path) -> None:
    """No Docker engine here: docker/shell_steps.py turns the Dockerfile into a
    bash script (stages as directories, each with a fresh venv for the base
    image's Python) and the image's build and its default command run for real.
    The model cache is mounted at /models, as a volume would be."""
    import subprocess
    import sys

    from streamcascade.models.registry import default_cache_dir

    script = subprocess.run(
        [sys.executable, str(ROOT / "docker" / "shell_steps.py"), str(tmp_path / "image"),
         f"/models={default_cache_dir()}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "pip wheel" in script and "--find-links" in script and "dpkg -s libgomp1" in script
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    # The image's default command answered its three problems.
    assert "3 answered, 0 dead letters" in result.stderr + result.stdout
