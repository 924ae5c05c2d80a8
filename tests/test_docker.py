"""docker/: the compose file validates and every service runs a real tiertwin command."""

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import typer.main
import yaml

from tiertwin.jobs.cli.main import app
from tiertwin.procs import free_ports

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


def test_every_service_runs_a_real_tiertwin_command_on_a_three_node_cluster():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    nodes = [name for name in services if name.startswith("kafka-")]
    assert len(nodes) == 3 and all(services[n]["image"] == "tiertwin-kafka:latest" for n in nodes)
    assert {"topics", "simulator", "edge", "cloud", "api"} <= set(services)
    for name, service in services.items():
        if name in nodes:
            continue
        assert service["image"] == "tiertwin:latest"
        assert _command_exists(service["command"]), (name, service["command"])
    assert "--local-twin" in services["simulator"]["command"]   # the device runtimes live in the simulator
    assert not _command_exists(["no-such-command"])


# -- the stack, for real ------------------------------------------------------------------------
ROOT = DOCKER.parent
ARTIFACTS = ROOT / "test-artifacts"


def _docker_engine() -> str | None:
    """None if a Docker engine answers (started here if this user may: dockerd as root), else why not."""
    if shutil.which("docker") is None:
        return "no docker CLI"
    if subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return None
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        return "no Docker engine runs and this user cannot start dockerd"
    ARTIFACTS.mkdir(exist_ok=True)
    subprocess.Popen(["dockerd"], stdout=open(ARTIFACTS / "dockerd.log", "ab"), stderr=subprocess.STDOUT,
                     start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
            return None
        time.sleep(1)
    return "dockerd did not answer within 60 s (test-artifacts/dockerd.log)"


def _get_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


@pytest.mark.docker
@pytest.mark.timeout(840)
def test_the_compose_stack_builds_and_every_tier_decides(request):
    """Build the images from what is here (Debian packages, wheels, Maven jars), bring up the stack
    (3 Kafka nodes, simulator with device runtimes, edge, cloud on Prism, API), and watch decisions
    of the local and edge tiers and the cloud's snapshots arrive at the API; then bring it down."""
    if "docker" not in (request.config.getoption("markexpr") or "") and not os.environ.get("TIERTWIN_DOCKER_TESTS"):
        pytest.skip("builds images and runs the compose stack (minutes): run with `bash scripts/test -m docker`")
    why = _docker_engine()
    if why:
        pytest.skip(why)
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    public = os.environ.get("TIERTWIN_DOCKER_PUBLIC_BASE") == "1"
    timings: dict[str, float] = {}
    started = time.monotonic()
    subprocess.run(["bash", str(DOCKER / "build-images"), *([] if public else ["--local-base"])], cwd=ROOT,
                   check=True)
    timings["build_s"] = round(time.monotonic() - started, 1)
    port = free_ports(1)[0]
    project = f"tiertwin-test-{port}"
    compose = [*cli, "-p", project, "-f", str(DOCKER / "compose.yaml")]
    env = {**os.environ, "TIERTWIN_API_PORT": str(port)}
    api = f"http://127.0.0.1:{port}"
    seen: dict = {}
    try:
        started = time.monotonic()
        subprocess.run([*compose, "up", "-d"], cwd=ROOT, env=env, check=True)
        timings["up_s"] = round(time.monotonic() - started, 1)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            state = _get_json(f"{api}/state")
            for tier in ("local", "edge"):
                seen[tier] = len(_get_json(f"{api}/decisions?tier={tier}&limit=50") or [])
            seen["snapshots"] = ((state or {}).get("cloud") or {}).get("snapshots", 0)
            seen["state_ues"] = (state or {}).get("ue_count", 0)
            if seen["local"] and seen["edge"] and seen["snapshots"] and seen["state_ues"]:
                break
            time.sleep(3)
        timings["first_decisions_of_every_tier_s"] = round(time.monotonic() - started, 1)
        logs = subprocess.run([*compose, "logs", "--no-color", "--tail", "40"], cwd=ROOT, env=env,
                              capture_output=True, text=True).stdout
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "docker-compose.log").write_text(logs)
    finally:
        started = time.monotonic()
        subprocess.run([*compose, "down", "-v", "--timeout", "20"], cwd=ROOT, env=env, capture_output=True)
        timings["down_s"] = round(time.monotonic() - started, 1)
        (ARTIFACTS / "docker.json").write_text(json.dumps({"timings": timings, "seen": seen}, indent=2))
        print(f"docker stack: {timings}, seen {seen}")
    assert seen.get("state_ues"), f"/state never showed UE twins: {seen} (test-artifacts/docker-compose.log)"
    assert seen.get("local") and seen.get("edge"), f"decisions of a tier never arrived: {seen}"
    assert seen.get("snapshots"), f"the cloud twin's snapshots never arrived: {seen}"
