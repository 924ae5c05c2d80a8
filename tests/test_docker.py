"""docker/: the compose file validates and every service runs a real tiertwin command."""

import shutil
import subprocess
from pathlib import Path

import pytest
import typer.main
import yaml

from tiertwin.jobs.cli.main import app

DOCKER = Path(__file__).resolve().parent.parent / "docker"


def _compose_cli() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_config_validates():
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed (scripts/setup installs docker-compose)")
    done = subprocess.run([*cli, "-f", str(DOCKER / "compose.yaml"), "config", "-q"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _command_exists(words: list[str]) -> bool:
    """Do ``words`` name a tiertwin command whose arguments and options parse?"""
    command = typer.main.get_command(app)
    rest = list(words)
    while rest and hasattr(command, "commands"):  # a group: descend by name
        command = command.commands.get(rest.pop(0))
        if command is None:
            return False
    if hasattr(command, "commands"):
        return False
    try:
        command.make_context("tiertwin", rest, resilient_parsing=False)
    except Exception as exc:  # typer vendors click: its UsageError is not click's
        return "Usage" not in type(exc).__name__ and "Parameter" not in type(exc).__name__
    return True


def test_every_service_runs_a_real_tiertwin_command_against_the_official_kafka_image():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert {"simulator", "local", "edge", "cloud", "api"} <= set(services)
    for name, service in services.items():
        if name == "kafka":
            continue
        assert _command_exists(service["command"]), (name, service["command"])
    assert not _command_exists(["no-such-command"])
