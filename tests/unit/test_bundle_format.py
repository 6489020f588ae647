"""Code bundles: deterministic packing, ignore rules, the size limit, safe unpacking."""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

import pytest

from api.cli import bundle_files
from datasets import bundle_format


def _project(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname='p'\n")
    (root / "flow.py").write_text("import helper\n")
    (root / "helper.py").write_text("VALUE = 1\n")
    (root / "pkg" / "__init__.py").write_text("")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o700)
    return root


def _pack(root: Path) -> tuple[bytes, bundle_format.Packed]:
    sel = bundle_files.select_files(root)
    out = io.BytesIO()
    packed = bundle_format.pack(root, sel.files, out)
    return out.getvalue(), packed


def test_same_content_same_digest_whatever_the_mtimes_modes_and_order(tmp_path: Path) -> None:
    a = _project(tmp_path / "a")
    b = _project(tmp_path / "b")
    os.utime(b / "helper.py", (time.time() - 86400, time.time() - 86400))
    (b / "helper.py").chmod(0o600)  # not executable: still 0644 in the bundle
    data_a, packed_a = _pack(a)
    data_b, packed_b = _pack(b)
    assert packed_a.digest == packed_b.digest
    assert data_a == data_b
    assert bundle_format.is_digest(packed_a.digest)
    assert packed_a.files == 5 and packed_a.size == len(data_a)
    with tarfile.open(fileobj=io.BytesIO(data_a), mode="r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {m.mtime for m in members} == {0}
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, "", "")}
    modes = {m.name: m.mode for m in members}
    assert modes["run.sh"] == 0o755 and modes["helper.py"] == 0o644
    assert data_a[4:8] == b"\0\0\0\0"  # gzip header mtime


def test_a_change_changes_the_digest(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    _, first = _pack(root)
    (root / "helper.py").write_text("VALUE = 2\n")
    _, second = _pack(root)
    assert first.digest != second.digest


def test_gitignore_cshareignore_nested_and_always_skipped(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    (root / ".gitignore").write_text("*.bin\n!keep.bin\nbuild/\n")
    (root / ".cshareignore").write_text("secret.txt\n")
    (root / "big.bin").write_bytes(b"x" * 10)
    (root / "keep.bin").write_bytes(b"k")
    (root / "build").mkdir()
    (root / "build" / "out.py").write_text("")
    (root / "secret.txt").write_text("s")
    (root / "sub").mkdir()
    (root / "sub" / ".gitignore").write_text("local.dat\n")
    (root / "sub" / "local.dat").write_text("l")
    (root / "sub" / "kept.py").write_text("")
    (root / "local.dat").write_text("a sibling's rule does not apply here")
    for skipped in (".git", "__pycache__", ".venv", "pkg/__pycache__"):
        (root / skipped).mkdir(exist_ok=True)
        (root / skipped / "x.pyc").write_text("")
    (root / "env").mkdir()
    (root / "env" / "pyvenv.cfg").write_text("home = /usr\n")
    files = bundle_files.select_files(root).files
    assert files == [
        ".cshareignore",
        ".gitignore",
        "flow.py",
        "helper.py",
        "keep.bin",
        "local.dat",
        "pkg/__init__.py",
        "pyproject.toml",
        "run.sh",
        "sub/.gitignore",
        "sub/kept.py",
    ]


def test_project_root_is_the_nearest_marked_ancestor(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    (root / "flows" / "deep").mkdir(parents=True)
    (root / "flows" / "deep" / "f.py").write_text("")
    assert bundle_files.project_root(root / "flows" / "deep" / "f.py") == root.resolve()
    (root / "flows" / "prefect.yaml").write_text("deployments: []\n")
    assert bundle_files.project_root(root / "flows" / "deep" / "f.py") == (root / "flows").resolve()


def test_too_large_lists_the_largest_files(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    (root / "data.csv").write_bytes(b"0" * 5000)
    (root / "model.pt").write_bytes(b"1" * 3000)
    with pytest.raises(bundle_files.BundleTooLarge) as caught:
        bundle_files.select_files(root, max_bytes=4000)
    text = str(caught.value)
    assert "CSHARE_BUNDLE_MAX_BYTES" in text
    assert text.index("data.csv") < text.index("model.pt")
    assert caught.value.largest[0] == (5000, "data.csv")


def test_the_limit_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _project(tmp_path / "p")
    monkeypatch.setenv("CSHARE_BUNDLE_MAX_BYTES", "10")
    with pytest.raises(bundle_files.BundleTooLarge):
        bundle_files.select_files(root)


def test_unpack_verifies_and_restores(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    data, packed = _pack(root)
    bundle = tmp_path / "b.tar.gz"
    bundle.write_bytes(data)
    dest = tmp_path / "out"
    assert bundle_format.unpack(bundle, dest, digest=packed.digest) == packed.files
    assert (dest / "helper.py").read_text() == "VALUE = 1\n"
    assert os.access(dest / "run.sh", os.X_OK)
    with pytest.raises(bundle_format.BundleError, match="checksum"):
        bundle_format.unpack(bundle, tmp_path / "out2", digest="sha256:" + "0" * 64)
    assert not (tmp_path / "out2").exists()


def _evil(tmp_path: Path, member: tarfile.TarInfo, payload: bytes = b"x") -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        member.size = len(payload) if member.isreg() else 0
        tar.addfile(member, io.BytesIO(payload) if member.isreg() else None)
    path = tmp_path / "evil.tar.gz"
    path.write_bytes(buf.getvalue())
    return path


@pytest.mark.parametrize("name", ["../escape.py", "/etc/passwd", "a/../../b", "a\\..\\b"])
def test_unpack_refuses_paths_that_escape(tmp_path: Path, name: str) -> None:
    bundle = _evil(tmp_path, tarfile.TarInfo(name))
    with pytest.raises(bundle_format.BundleError, match="unsafe path"):
        bundle_format.unpack(bundle, tmp_path / "out")
    assert not (tmp_path / "escape.py").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE])
def test_unpack_refuses_links_and_devices(tmp_path: Path, kind: bytes) -> None:
    member = tarfile.TarInfo("link")
    member.type = kind
    member.linkname = "/etc/passwd"
    bundle = _evil(tmp_path, member)
    with pytest.raises(bundle_format.BundleError, match="regular files"):
        bundle_format.unpack(bundle, tmp_path / "out")


def test_unpack_refuses_a_bomb(tmp_path: Path) -> None:
    bundle = _evil(tmp_path, tarfile.TarInfo("big"), b"0" * 10_000)
    with pytest.raises(bundle_format.BundleError, match="more than"):
        bundle_format.unpack(bundle, tmp_path / "out", max_bytes=1000)


def test_unpack_refuses_a_damaged_archive(tmp_path: Path) -> None:
    root = _project(tmp_path / "p")
    data, _packed = _pack(root)
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0xFF
    bundle = tmp_path / "damaged.tar.gz"
    bundle.write_bytes(bytes(damaged))
    with pytest.raises(bundle_format.BundleError, match=r"not a valid tar\.gz"):
        bundle_format.unpack(bundle, tmp_path / "out")
    bundle.write_bytes(data[: len(data) // 2])  # cut short
    with pytest.raises(bundle_format.BundleError, match=r"not a valid tar\.gz"):
        bundle_format.unpack(bundle, tmp_path / "out2")


def test_digest_helpers() -> None:
    d = "sha256:" + "ab" * 32
    assert bundle_format.short(d) == "sha256:" + "ab" * 6
    assert bundle_format.digest_hex(d) == "ab" * 32
    with pytest.raises(bundle_format.BundleError):
        bundle_format.digest_hex("md5:abc")
