"""The compose file, checked by `docker compose config` where that plugin exists, and structurally always; and every
compose role run as a local process against a local server, as the containers would run them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_is_valid():
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert set(doc["services"]) == {"setup", "server", "brand", "platform", "auditor"}
    assert doc["services"]["server"]["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    assert "--tls-cert" in doc["services"]["server"]["command"]
    for name, service in doc["services"].items():
        command = service["command"]
        if command[:3] == ["python", "-m", "cleanroom.devtools.compose"]:
            assert command[3] == name
    assert (ROOT / "Dockerfile").exists()
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        done = subprocess.run(
            [docker, "compose", "config", "-q"], cwd=ROOT, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_compose_role_runs_end_to_end(tmp_path):
    shared, data = tmp_path / "shared", tmp_path / "data"
    env = {**os.environ, "CLEANROOM_COMPOSE_SCALE": "0.1"}
    role = [sys.executable, "-m", "cleanroom.devtools.compose"]
    subprocess.run([*role, "setup", "--shared", str(shared), "--data", str(data)], check=True, env=env, timeout=120)
    port = _port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cleanroom.cli",
            "serve",
            "--data-dir",
            str(data),
            "--port",
            str(port),
            "--tls-cert",
            str(shared / "certs" / "server.pem"),
            "--tls-key",
            str(shared / "certs" / "server.key"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == str(port)
        server.stdout.close()
        target = ["--shared", str(shared), "--target", f"localhost:{port}"]
        procs = {
            name: subprocess.Popen(
                [*role, name, *target, *(["--data", str(data)] if name == "auditor" else [])],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
            for name in ("brand", "platform", "auditor")
        }
        outputs = {name: p.communicate(timeout=600)[0] for name, p in procs.items()}
        for name, p in procs.items():
            assert p.returncode == 0, f"{name}:\n{outputs[name][-3000:]}"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    assert "brand: matched; the platform has 4,000 users" in outputs["brand"]
    assert "received lookalike audience" in outputs["platform"]
    assert "'valid': True" in outputs["auditor"]
    assert "VALID" in outputs["auditor"]
