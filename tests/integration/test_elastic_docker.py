"""The docker capacity provider's calls against a real Docker engine (tests/docker_engine.py).

An agent image needs Python and the project's environment, and none can be pulled or
built offline here (no base image; a rootfs of the host's Python, its shared libraries
and the venv would tie the image to this host). So the image is busybox (a `docker
import` of a rootfs tar) with a stand-in `cshare` (a shell script that writes down its
arguments and environment, then sleeps like an agent): what is tested is the provider's
part, through the real engine API: the container it starts (image, command, the machine
token in its environment, labels, host network), that it sees it alive, that it notices a
container that ended, and that stopping removes it. Skipped (with the reason) where
dockerd is missing, failed under CI=true.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from orgs.launchers import DockerLauncher, LaunchSpec
from tests.docker_engine import DockerEngine, _busybox_rootfs_tar, _need, docker_engine

__all__ = ["docker_engine"]  # the fixture, used by name

IMAGE = "cshare-test/agent-standin:1"
STANDIN = """#!/bin/sh
echo "$@" > /tmp/args
env > /tmp/env
exec sleep 3600
"""


def _image(engine: DockerEngine) -> str:
    """busybox plus /bin/cshare (the stand-in), imported into the engine."""
    paths = _need("busybox")
    out = io.BytesIO()
    rootfs = io.BytesIO(_busybox_rootfs_tar(paths["busybox"]))
    with tarfile.open(fileobj=rootfs) as base, tarfile.open(fileobj=out, mode="w") as tar:
        for member in base.getmembers():
            tar.addfile(member, base.extractfile(member) if member.isfile() else None)
        data = STANDIN.encode()
        info = tarfile.TarInfo("bin/cshare")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    engine.cli("import", "-", IMAGE, input_=out.getvalue())
    return IMAGE


def _spec(engine: DockerEngine, image: str) -> LaunchSpec:
    name = f"cpu-docker-{uuid.uuid4().hex[:8]}"
    return LaunchSpec(
        machine_id=uuid.uuid4(),
        name=name,
        org="lab",
        machine_type="cpu",
        slots=2,
        token="cshm_" + "x" * 40,
        api_url="http://127.0.0.1:8000",
        config={"engine_url": engine.host, "image": image, "network": "host"},
    )


def test_docker_provider_starts_watches_and_stops_agent_containers(
    docker_engine: DockerEngine, tmp_path: Path
) -> None:
    image = _image(docker_engine)
    launcher = DockerLauncher()
    spec = _spec(docker_engine, image)
    handle = launcher.start(spec)
    try:
        assert handle["engine_url"] == docker_engine.host
        assert launcher.alive(handle)
        inspected = json.loads(docker_engine.cli("inspect", str(handle["container"])))[0]
        assert inspected["Name"] == f"/cshare-{spec.name}"
        assert inspected["Config"]["Image"] == image
        assert inspected["Config"]["Cmd"] == [
            "cshare",
            "agent",
            "start",
            "--name",
            spec.name,
            "--machine-type",
            "cpu",
            "--slots",
            "2",
        ]
        assert inspected["Config"]["Labels"]["cshare.machine"] == str(spec.machine_id)
        assert inspected["HostConfig"]["NetworkMode"] == "host"
        env = inspected["Config"]["Env"]
        assert f"CSHARE_MACHINE_TOKEN={spec.token}" in env
        assert "CSHARE_ORG=lab" in env and f"CSHARE_API_URL={spec.api_url}" in env
        # The stand-in ran as the agent would: with those arguments.
        args = ""
        for _ in range(50):  # the script may not have written it yet
            with contextlib.suppress(AssertionError):
                args = docker_engine.cli("exec", str(handle["container"]), "cat", "/tmp/args")
                break
            time.sleep(0.1)
        expected = ["agent", "start", "--name", spec.name, "--machine-type", "cpu"]
        assert args.split() == [*expected, "--slots", "2"]
        # A container that ended on its own is not alive (the scaler replaces it).
        docker_engine.cli("kill", str(handle["container"]))
        assert not launcher.alive(handle)
        launcher.stop(handle)
        assert f"cshare-{spec.name}" not in docker_engine.containers()
        # Stopping one that is gone already is fine.
        launcher.stop(handle)
    finally:
        with contextlib.suppress(AssertionError):  # gone already when the test passed
            docker_engine.cli("rm", "-f", str(handle["container"]))


def test_docker_provider_says_when_the_engine_refuses(
    docker_engine: DockerEngine,
) -> None:
    from policies.errors import Unavailable

    spec = _spec(docker_engine, "cshare-test/absent-image:0")
    with pytest.raises(Unavailable, match="did not start the agent"):
        DockerLauncher().start(spec)
