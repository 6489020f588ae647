"""`cshare up`'s banner tells a new terminal how to get `cshare` on PATH."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from api.cli.up import stack


def test_hint_when_the_venv_is_not_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if not (stack.VENV_BIN / "activate").is_file():
        pytest.skip(f"the tests do not run from a virtual environment ({stack.VENV_BIN})")
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", "/bin"]))
    venv_parent = stack.VENV_BIN.parent.parent
    assert stack.activate_hint(venv_parent) == f"source {stack.VENV_BIN.parent.name}/bin/activate"
    elsewhere = stack.activate_hint(tmp_path)
    assert elsewhere is not None and elsewhere.startswith("source /")
    assert elsewhere.endswith("/bin/activate")
    monkeypatch.setenv("PATH", os.pathsep.join([str(stack.VENV_BIN), "/usr/bin"]))
    assert stack.activate_hint(venv_parent) is None
