"""Dataset names, version references, file names and paths inside directory versions,
and the wire format's pure helpers (manifest checksum, tar length). No I/O."""

from __future__ import annotations

import hashlib
import io
import tarfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from datasets import wire
from datasets.names import NAME_RE, parse_ref, validate_filename, validate_name
from policies.errors import Invalid


@pytest.mark.parametrize(
    "name", ["a", "A1", "images", "v1.2_final-copy", "0", "x" * 128, "data.tar.gz"]
)
def test_good_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "..",
        "a..b",
        "a/b",
        "/abs",
        "a\\b",
        "-x",
        ".x",
        "_x",
        "x" * 129,
        "x" * 300,
        "tab\t",
        "nul\x00",
        "new\nline",
        "trailing\n",
        "space here",
        "é",
        "a\u202eb",
    ],
)
def test_bad_names(name: str) -> None:
    with pytest.raises(Invalid) as info:
        validate_name(name)
    assert info.value.field == "name"


@given(st.text(max_size=200))
def test_any_accepted_name_is_safe_as_a_path_segment(name: str) -> None:
    try:
        validate_name(name)
    except Invalid:
        return
    assert NAME_RE.fullmatch(name)
    assert "/" not in name and ".." not in name and name not in (".", "..")
    assert all(32 < ord(c) < 127 for c in name)


def test_refs() -> None:
    assert parse_ref("images") == ("images", None)
    assert parse_ref("images@3") == ("images", 3)
    assert parse_ref("images@latest") == ("images", None)
    for bad in ("images@0", "images@-1", "images@x", "images@1.5", "../x@1", "@3"):
        with pytest.raises(Invalid):
            parse_ref(bad)


def test_filenames() -> None:
    assert validate_filename("model v2.pt") == "model v2.pt"
    for bad in ("", ".", "..", "a/b", "a\\b", "x\x00", "x" * 256):
        with pytest.raises(Invalid):
            validate_filename(bad)


@pytest.mark.parametrize(
    ("raw", "clean"),
    [("a", "a"), ("./a//b/", "a/b"), ("dir/./file", "dir/file"), ("é/ü.txt", "é/ü.txt")],
)
def test_safe_paths(raw: str, clean: str) -> None:
    assert wire.safe_path(raw) == clean


@pytest.mark.parametrize(
    "raw", ["", ".", "/etc/passwd", "../x", "a/../../x", "a\\b", "a/\x00", "a/\x1b[2J", "x" * 5000]
)
def test_unsafe_paths(raw: str) -> None:
    assert wire.safe_path(raw) is None


@given(st.text(max_size=100))
def test_safe_paths_never_escape(raw: str) -> None:
    clean = wire.safe_path(raw)
    if clean is not None:
        assert not clean.startswith("/")
        assert ".." not in clean.split("/")
        assert wire.safe_path(clean) == clean  # normalised is a fixed point


def test_manifest_checksum_is_order_independent() -> None:
    a = wire.ManifestEntry("b.txt", hashlib.sha256(b"b").hexdigest(), 1)
    b = wire.ManifestEntry("a/c.txt", hashlib.sha256(b"c").hexdigest(), 1)
    assert wire.manifest_sha256([a, b]) == wire.manifest_sha256([b, a])
    assert wire.manifest_text([a, b]).splitlines()[0].endswith(" a/c.txt")
    assert wire.manifest_sha256([]) == hashlib.sha256(b"").hexdigest()


def test_generated_tar_has_the_announced_length_and_reads_back() -> None:
    files = {"a.txt": b"hello", "long/" + "n" * 150 + ".bin": b"\x00" * 1000, "é.txt": b""}
    entries = [(p, len(d), lambda d=d: iter([d])) for p, d in files.items()]
    data = b"".join(wire.iter_tar(entries, mtime=1_700_000_000))
    assert len(data) == wire.tar_length([(p, len(d)) for p, d in files.items()], mtime=1.7e9)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    assert got == files


def test_a_source_of_the_wrong_size_breaks_the_tar_loudly() -> None:
    with pytest.raises(OSError):
        b"".join(wire.iter_tar([("a", 10, lambda: iter([b"short"]))]))
