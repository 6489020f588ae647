"""How capacity providers start and stop agents (orgs.capacity; used by the scaler).

Each launched agent is `cshare agent start` with the machine token of a machine the
scaler registered for it (`CSHARE_MACHINE_TOKEN`: no registration, no token file), so it
is an ordinary machine with an ordinary scoped credential.

- `ProcessLauncher`: a subprocess on this host, in its own session (a restart of the
  control plane does not take its agents and their jobs with it), with its own work dir
  under `CSHARE_ELASTIC_WORK_DIR` (`HOME`, Prefect's home, temp files, `agent.log`,
  `agent.pid`) and an environment of its own, never the server's (no secrets).
- `DockerLauncher`: a container of the provider's agent image on the provider's engine
  (one the operator allowed), labelled with the machine's id.

A handle (stored with the machine) is what it takes to look at or stop the agent later,
possibly from another process after a restart: pid, host and work dir; or container id.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

from policies.errors import Unavailable

__all__ = ["DockerLauncher", "LaunchSpec", "Launcher", "ProcessLauncher", "agent_args"]

log = logging.getLogger(__name__)

STOP_TIMEOUT_S: Final = 20.0
# Variables a process agent gets from the server's environment (nothing secret).
PASS_ENV: Final = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV")


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    machine_id: uuid.UUID
    name: str
    org: str  # slug
    machine_type: str
    slots: int
    token: str  # the machine token (secret)
    api_url: str
    config: Mapping[str, Any]


class Launcher(Protocol):
    def start(self, spec: LaunchSpec) -> dict[str, Any]: ...

    def alive(self, handle: Mapping[str, Any]) -> bool: ...

    def stop(self, handle: Mapping[str, Any]) -> None: ...


def agent_args(spec: LaunchSpec) -> list[str]:
    return [
        "agent",
        "start",
        "--name",
        spec.name,
        "--machine-type",
        spec.machine_type,
        "--slots",
        str(spec.slots),
    ]


def _agent_env(spec: LaunchSpec) -> dict[str, str]:
    return {
        "CSHARE_API_URL": spec.api_url,
        "CSHARE_ORG": spec.org,
        "CSHARE_MACHINE_TOKEN": spec.token,
    }


# ------------------------------------------------------------------------- process


class ProcessLauncher:
    def __init__(self, base: Path) -> None:
        self.base = base
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, spec: LaunchSpec) -> dict[str, Any]:
        work = self.base / spec.org / spec.name
        for sub in ("home", "tmp", "agent", "prefect"):
            (work / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        work = work.resolve()  # what /proc/<pid>/cwd shows
        env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
        env.update(_agent_env(spec))
        env.update(
            HOME=str(work / "home"),
            TMPDIR=str(work / "tmp"),
            CSHARE_AGENT_HOME=str(work / "agent"),
            CSHARE_CONFIG=str(work / "agent" / "cli.json"),
            PREFECT_HOME=str(work / "prefect"),
        )
        flows_dir = spec.config.get("flows_dir") or str(work / "home")
        args = [
            sys.executable,
            "-c",
            "from api.cli.main import app; app()",
            *agent_args(spec),
            "--flows-dir",
            str(flows_dir),
        ]
        with (work / "agent.log").open("ab") as out:
            child = subprocess.Popen(
                args,
                env=env,
                cwd=work,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._children[child.pid] = child
        (work / "agent.pid").write_text(f"{child.pid}\n")
        return {"pid": child.pid, "host": socket.gethostname(), "work_dir": str(work)}

    def _ours(self, handle: Mapping[str, Any]) -> int | None:
        """The pid if it is still this machine's agent, None if it is gone."""
        pid = int(handle.get("pid") or 0)
        if pid <= 0:
            return None
        child = self._children.get(pid)
        if child is not None:
            if child.poll() is None:
                return pid
            self._children.pop(pid, None)
            return None
        # Started by an earlier process of the control plane: still the same agent if
        # it runs in the machine's work dir (a reused pid would not).
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return None
        return pid if cwd == handle.get("work_dir") else None

    def alive(self, handle: Mapping[str, Any]) -> bool:
        if handle.get("host") not in (None, socket.gethostname()):
            return True  # another host's: its heartbeats tell (ReplaceCrashed)
        return self._ours(handle) is not None

    def stop(self, handle: Mapping[str, Any]) -> None:
        """SIGTERM (the agent ends cleanly), SIGKILL after STOP_TIMEOUT_S; the work dir
        goes, its log is kept next to it as `<name>.log`."""
        pid = self._ours(handle)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while self._ours(handle) is not None and time.monotonic() < deadline:
                time.sleep(0.1)
            if self._ours(handle) is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            child = self._children.pop(pid, None)
            if child is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=5)
        work = Path(str(handle.get("work_dir") or ""))
        if work.name and work.is_dir() and work.is_relative_to(self.base.resolve()):
            with contextlib.suppress(OSError):
                shutil.copyfile(work / "agent.log", work.parent / f"{work.name}.log")
            shutil.rmtree(work, ignore_errors=True)


# -------------------------------------------------------------------------- docker


class DockerLauncher:
    def __init__(self, timeout_s: float = 60) -> None:
        self.timeout_s = timeout_s

    def _client(self, url: str) -> Any:
        import docker  # only the docker provider needs it

        try:
            return docker.DockerClient(base_url=url, timeout=int(self.timeout_s))
        except docker.errors.DockerException as exc:
            raise Unavailable(f"Docker engine {url} is unreachable: {exc}") from None

    def start(self, spec: LaunchSpec) -> dict[str, Any]:
        import docker

        url = str(spec.config["engine_url"])
        network = str(spec.config.get("network") or "host")
        client = self._client(url)
        try:
            container = client.containers.run(
                str(spec.config["image"]),
                command=["cshare", *agent_args(spec)],
                environment=_agent_env(spec),
                name=f"cshare-{spec.name}",
                labels={"cshare.machine": str(spec.machine_id), "cshare.org": spec.org},
                detach=True,
                **({"network_mode": "host"} if network == "host" else {"network": network}),
            )
        except docker.errors.DockerException as exc:
            raise Unavailable(f"Docker engine {url} did not start the agent: {exc}") from None
        finally:
            client.close()
        return {"engine_url": url, "container": container.id}

    def alive(self, handle: Mapping[str, Any]) -> bool:
        import docker

        client = self._client(str(handle["engine_url"]))
        try:
            container = client.containers.get(str(handle["container"]))
            return str(container.status) in ("created", "running", "restarting")
        except docker.errors.NotFound:
            return False
        except docker.errors.DockerException:
            return True  # the engine is unreachable: heartbeats tell
        finally:
            client.close()

    def stop(self, handle: Mapping[str, Any]) -> None:
        import docker

        client = self._client(str(handle["engine_url"]))
        try:
            container = client.containers.get(str(handle["container"]))
            container.stop(timeout=int(STOP_TIMEOUT_S))
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.DockerException as exc:
            raise Unavailable(f"Docker engine did not stop the agent: {exc}") from None
        finally:
            client.close()
