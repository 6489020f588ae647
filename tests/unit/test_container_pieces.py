"""Pure pieces of container jobs: image references, digests, log lines, summaries."""

from __future__ import annotations

import pytest

from agents import container
from flows.containers import pinned_ref
from orgs.machines import docker_summary

DIGEST = "sha256:" + "c" * 64


@pytest.mark.parametrize(
    ("ref", "split"),
    [
        ("alpine", ("alpine", "latest")),
        ("127.0.0.1:5000/team/tool:1", ("127.0.0.1:5000/team/tool", "1")),
        ("127.0.0.1:5000/team/tool", ("127.0.0.1:5000/team/tool", "latest")),
        (f"ghcr.io/o/r@{DIGEST}", ("ghcr.io/o/r", DIGEST)),
    ],
)
def test_references_split_as_the_engine_pulls_them(ref: str, split: tuple[str, str]) -> None:
    assert container._split_ref(ref) == split


def test_the_registry_digest_of_the_pulled_repository_wins() -> None:
    attrs = {
        "Id": "sha256:" + "1" * 64,
        "RepoDigests": [f"other/repo@sha256:{'2' * 64}", f"host:5000/team/tool@{DIGEST}"],
    }
    assert container.image_digest(attrs, "host:5000/team/tool") == DIGEST
    assert container.image_digest({"Id": "sha256:" + "1" * 64}, "x") == "sha256:" + "1" * 64


def test_lines_are_cut_where_the_newlines_are_whatever_the_chunks() -> None:
    chunks = [b"one\ntw", b"o\r\n", b"", b"three", b"\nfour"]
    assert list(container._lines(iter(chunks))) == ["one", "two", "three", "four"]


def test_a_rerun_pins_the_digest_and_drops_the_tag() -> None:
    assert pinned_ref({"ref": "h:5000/t/tool:1", "digest": DIGEST}) == f"h:5000/t/tool@{DIGEST}"
    assert pinned_ref({"ref": "h:5000/t/tool:1", "digest": None}) == "h:5000/t/tool:1"
    assert pinned_ref({"ref": f"alpine@{DIGEST}", "digest": DIGEST}) == f"alpine@{DIGEST}"


def test_machines_say_docker_yes_with_the_engine_or_no() -> None:
    assert docker_summary({"docker": {"version": "20.10.24"}}) == "yes (engine 20.10.24)"
    assert docker_summary({"docker": None}) == "no"
    assert docker_summary({}) == "no"
