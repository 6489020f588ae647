"""Hardware detection: parsing /proc/meminfo and nvidia-smi, and what `detect` reports."""

from __future__ import annotations

import subprocess

import pytest

from agents import hardware

NVIDIA_SMI = """\
0, NVIDIA A100-SXM4-40GB, 40960, GPU-3b5c8d2e-aaaa-bbbb-cccc-000000000001, 535.104.05
1, NVIDIA A100-SXM4-40GB, 40960, GPU-3b5c8d2e-aaaa-bbbb-cccc-000000000002, 535.104.05
garbage line
"""


def test_meminfo_total_in_mb() -> None:
    text = "MemFree:  100 kB\nMemTotal:       24683520 kB\nSwapTotal: 0 kB\n"
    assert hardware.parse_meminfo(text) == 24683520 // 1024
    assert hardware.parse_meminfo("nothing here") is None


def test_nvidia_smi_output_becomes_gpus() -> None:
    gpus = hardware.parse_nvidia_smi(NVIDIA_SMI)
    assert [g["index"] for g in gpus] == [0, 1]
    assert gpus[0] == {
        "index": 0,
        "name": "NVIDIA A100-SXM4-40GB",
        "memory_mb": 40960,
        "uuid": "GPU-3b5c8d2e-aaaa-bbbb-cccc-000000000001",
        "driver": "535.104.05",
    }
    assert hardware.parse_nvidia_smi("") == []


def test_detect_reports_cpu_memory_os_python_and_gpus() -> None:
    seen: list[list[str]] = []

    def fake_smi(args: list[str]) -> str:
        seen.append(args)
        return NVIDIA_SMI

    info = hardware.detect(nvidia_smi=fake_smi)
    assert info["cpu_count"] >= 1 and info["memory_mb"] > 0
    assert info["os"] and info["python"].count(".") == 2
    assert info["gpu_count"] == 2 and info["gpus"][1]["memory_mb"] == 40960
    assert "--format=csv,noheader,nounits" in seen[0]


def test_a_failing_gpu_probe_never_fails_detection() -> None:
    def broken(args: list[str]) -> str:
        raise subprocess.CalledProcessError(9, args)

    info = hardware.detect(nvidia_smi=broken)
    assert info["gpus"] == [] and "nvidia-smi failed" in info["gpu_error"]


def test_without_nvidia_smi_there_are_simply_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agents.hardware.shutil.which", lambda _name: None)
    info = hardware.detect()
    assert info["gpus"] == [] and "gpu_error" not in info


def test_default_machine_name_is_a_valid_machine_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agents.hardware.socket.gethostname", lambda: "_lab box#3.example.org")
    assert hardware.default_machine_name() == "lab-box-3"
    monkeypatch.setattr("agents.hardware.socket.gethostname", lambda: "")
    assert hardware.default_machine_name() == "machine"
