"""What a machine has: CPUs, memory, GPUs (through `nvidia-smi` when present), OS, Python.

Shown to the organization when the machine registers, so admins know what they approve
and members know where their jobs may land. Detection never fails the agent: anything
that cannot be read is left out (and a GPU probe problem is reported as `gpu_error`).
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
from collections.abc import Callable
from typing import Any, Final

__all__ = ["default_machine_name", "detect", "parse_meminfo", "parse_nvidia_smi"]

NVIDIA_SMI_QUERY: Final = (
    "--query-gpu=index,name,memory.total,uuid,driver_version",
    "--format=csv,noheader,nounits",
)
NVIDIA_SMI_TIMEOUT_S: Final = 10.0

Runner = Callable[[list[str]], str]


def parse_meminfo(text: str) -> int | None:
    """Total memory in MB from /proc/meminfo text (`MemTotal: 24683520 kB`)."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                kb = int(parts[1])
                unit = parts[2].lower() if len(parts) > 2 else "kb"
                return kb // 1024 if unit == "kb" else kb // (1024 * 1024)
    return None


def parse_nvidia_smi(output: str) -> list[dict[str, Any]]:
    """GPUs from `nvidia-smi --query-gpu=index,name,memory.total,uuid,driver_version
    --format=csv,noheader,nounits` output; malformed lines are skipped."""
    gpus: list[dict[str, Any]] = []
    for line in output.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 3 or not fields[0].isdigit():
            continue
        gpu: dict[str, Any] = {"index": int(fields[0]), "name": fields[1]}
        memory = fields[2].split()[0] if fields[2] else ""
        if memory.isdigit():
            gpu["memory_mb"] = int(memory)
        if len(fields) > 3 and fields[3]:
            gpu["uuid"] = fields[3]
        if len(fields) > 4 and fields[4]:
            gpu["driver"] = fields[4]
        gpus.append(gpu)
    return gpus


def _memory_mb() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            found = parse_meminfo(fh.read())
        if found is not None:
            return found
    except OSError:
        pass
    try:  # other Unixes
        pages = os.sysconf("SC_PHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
        return int(pages * page_size // (1024 * 1024))
    except (ValueError, OSError, AttributeError):
        return None


def _run_nvidia_smi(args: list[str]) -> str:
    completed = subprocess.run(
        args, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=True
    )
    return completed.stdout


def _gpus(runner: Runner | None) -> tuple[list[dict[str, Any]], str | None]:
    exe = shutil.which("nvidia-smi")
    if exe is None and runner is None:
        return [], None  # no NVIDIA driver here: no GPUs to report, not an error
    try:
        output = (runner or _run_nvidia_smi)([exe or "nvidia-smi", *NVIDIA_SMI_QUERY])
    except (OSError, subprocess.SubprocessError) as exc:
        return [], f"nvidia-smi failed: {type(exc).__name__}"
    return parse_nvidia_smi(output), None


def docker_engine(timeout_s: float = 3.0) -> dict[str, Any] | None:
    """The Docker engine this agent reaches (`DOCKER_HOST`, else the default socket):
    `{"version", "api_version"}`, or None when there is none (or it does not answer in
    `timeout_s`). Container jobs go only to machines that report one."""
    try:
        import docker  # the agent's only use of it besides agents.container

        client = docker.from_env(timeout=max(1, int(timeout_s)))
        try:
            info = client.version()
        finally:
            client.close()
    except Exception:  # no socket, no permission, not an engine: no Docker here
        return None
    return {"version": str(info.get("Version", "")), "api_version": str(info.get("ApiVersion", ""))}


def detect(*, nvidia_smi: Runner | None = None) -> dict[str, Any]:
    """The machine's hardware as a JSON-ready mapping (see the module docstring)."""
    gpus, gpu_error = _gpus(nvidia_smi)
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "memory_mb": _memory_mb(),
        "gpus": gpus,
        "gpu_count": len(gpus),
        "os": platform.system(),
        "os_release": platform.release(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "hostname": socket.gethostname(),
    }
    if gpu_error:
        info["gpu_error"] = gpu_error
    info["docker"] = docker_engine()
    return {k: v for k, v in info.items() if v is not None}


def default_machine_name() -> str:
    """The host name, reduced to what machine names allow (letters, digits, . _ -)."""
    raw = socket.gethostname().split(".")[0] or "machine"
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in raw)
    cleaned = cleaned.lstrip("._-")[:64]
    return cleaned or "machine"
