"""deploy -> jobs -> stop, with real processes, and spec validation errors that name the field."""

import os
import subprocess
import sys
import time

import httpx
import pytest
from tiertwin.procs import free_ports

pytestmark = pytest.mark.broker


def _cli(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "tiertwin.jobs.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_deploy_lists_and_stops_a_job(broker, tmp_path):
    port = free_ports(1)[0]
    spec = tmp_path / "api.yaml"
    spec.write_text(f"name: twin-api\ntier: api\ninstances: 1\nargs: ['--port', '{port}']\n")
    env = {**os.environ, "TIERTWIN_HOME": str(tmp_path / "home")}
    deployed = _cli("deploy", str(spec), env=env)
    assert deployed.returncode == 0, deployed.stderr
    assert "deployed twin-api (api, 1 instance(s)" in deployed.stdout
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise AssertionError("the deployed API never answered")
        listed = _cli("jobs", "--sample", "0.1", env=env)
        assert listed.returncode == 0, listed.stderr
        [row] = [line for line in listed.stdout.splitlines() if "twin-api" in line]
        assert "running" in row and "1/1" in row
        again = _cli("deploy", str(spec), env=env)
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        stopped = _cli("stop", "twin-api", env=env)
    assert stopped.returncode == 0 and "1 instance(s)" in stopped.stdout
    listed = _cli("jobs", "--sample", "0.1", env=env)
    assert "stopped" in [line for line in listed.stdout.splitlines() if "twin-api" in line][0]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)


@pytest.mark.parametrize("body,field", [
    ("name: x\ntier: fog\n", "field tier"),
    ("name: x\ntier: local\ninstances: 0\n", "field instances"),
    ("name: Bad_Name\ntier: local\n", "field name"),
    ("name: x\ntier: local\nreplicas: 2\n", "field replicas"),
])
def test_invalid_specs_name_the_bad_field(tmp_path, body, field):
    spec = tmp_path / "bad.yaml"
    spec.write_text(body)
    done = _cli("deploy", str(spec), env={**os.environ, "TIERTWIN_HOME": str(tmp_path / "home")})
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and field in done.stderr, done.stderr
    assert not (tmp_path / "home" / "jobs").exists()
