"""Lineage through the API (SQLite and PostgreSQL) and the CLI.

A chain `raw@1 -> job 1 -> clean@1 -> job 2 -> model@1` is recorded the way jobs record
it (pinned inputs, outputs uploaded with the job's own token), then read back from every
point:
the graph's nodes and edges, the job record, hidden nodes for datasets the caller may
not read, and the CLI's tree and DOT.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agents import materialize
from api.app import create_app
from api.cli.main import app as cli_app
from datasets import codeversion
from flows import lineage
from flows.models import Job
from orgs.config import get_settings
from orgs.db import Database
from tests.integration.test_datasets import (
    World,
    as_job,
    create,
    ds,
    job_token,
    make_job,
    tar_of,
    upload,
    upload_as_job,
    world,
)
from tests.support import ApiClient, serve_in_thread

__all__ = ["world"]  # the fixture, shared with test_datasets


@dataclass
class Chain:
    job1: Job
    job2: Job


def build_chain(api: ApiClient, w: World) -> Chain:
    create(api, w, w.alice, "raw")
    create(api, w, w.alice, "clean")
    create(api, w, w.alice, "model")
    assert upload(api, w, w.alice, "raw", b"raw rows").status_code == 201
    job1 = make_job(
        api.db, w.slug, w.alice.id, inputs=[{"dataset": "raw", "version": 1}], state="running"
    )
    # The job's outputs: uploaded by the job itself, with its token (only it may).
    r = upload_as_job(api, w, job_token(api.db, job1), "clean", b"clean rows")
    assert r.status_code == 201 and r.json()["produced_by_job_id"] == str(job1.id)
    job2 = make_job(api.db, w.slug, w.alice.id, inputs=["clean@1", "weights=raw"], state="running")
    r = upload_as_job(api, w, job_token(api.db, job2), "model", b"the model")
    assert r.status_code == 201, r.text
    with api.db.transaction() as s:
        lineage.record_job_lineage(
            s,
            job2.id,
            code={"git_commit": "abc123", "git_dirty": False},
            machine={"name": "gpu-box-1", "hardware": {"cpus": 8}},
            resources_used={"max_rss_mb": 120},
        )
    return Chain(job1, job2)


def names(graph: dict[str, Any]) -> set[str]:
    out = set()
    for n in graph["nodes"]:
        if n["type"] == "job":
            out.add(f"job:{n['job_id']}")
        elif n.get("hidden"):
            out.add("hidden")
        else:
            out.add(f"{n['dataset']}@{n['version']}")
    return out


def edges(graph: dict[str, Any]) -> set[tuple[str, str, str]]:
    label = {}
    for n in graph["nodes"]:
        label[n["id"]] = (
            f"job:{n['job_id']}" if n["type"] == "job" else f"{n['dataset']}@{n['version']}"
        )
    return {(label[e["source"]], label[e["target"]], e["kind"]) for e in graph["edges"]}


def test_version_lineage_goes_both_ways(api: ApiClient, world: World) -> None:
    chain = build_chain(api, world)
    j1, j2 = f"job:{chain.job1.id}", f"job:{chain.job2.id}"
    r = api.get(f"/orgs/{world.slug}/lineage", world.bob, params={"dataset": "clean"})
    assert r.status_code == 200, r.text
    graph = r.json()
    assert names(graph) == {"raw@1", j1, "clean@1", j2, "model@1"}
    assert edges(graph) == {
        ("raw@1", j1, "input"),
        (j1, "clean@1", "output"),
        ("clean@1", j2, "input"),
        ("raw@1", j2, "input"),  # job 2 also read raw (as 'weights')
        (j2, "model@1", "output"),
    }
    # From the raw data: everything downstream.
    graph = api.get(f"/orgs/{world.slug}/lineage", world.bob, params={"dataset": "raw"}).json()
    assert names(graph) == {"raw@1", j1, "clean@1", j2, "model@1"}
    # From the model: everything upstream.
    graph = api.get(
        f"/orgs/{world.slug}/lineage", world.bob, params={"dataset": "model", "version": "1"}
    ).json()
    assert {("clean@1", j2, "input"), ("raw@1", j2, "input"), (j2, "model@1", "output")} <= (
        edges(graph)
    )
    assert ("raw@1", j1, "input") in edges(graph)
    # depth bounds the walk.
    graph = api.get(
        f"/orgs/{world.slug}/lineage", world.bob, params={"dataset": "model", "depth": 1}
    ).json()
    assert names(graph) == {"model@1", j2}


def test_job_lineage_has_the_full_record(api: ApiClient, world: World) -> None:
    chain = build_chain(api, world)
    r = api.get(f"/orgs/{world.slug}/jobs/{chain.job2.id}/lineage", world.alice)
    assert r.status_code == 200, r.text
    body = r.json()
    job = body["job"]
    assert job["user"]["name"] == world.alice.name
    assert job["code"] == {"git_commit": "abc123", "git_dirty": False}
    assert job["machine"]["name"] == "gpu-box-1"
    assert job["resources"]["requested"] == {"memory_mb": 512, "max_runtime_s": 600}
    assert job["resources"]["used"] == {"max_rss_mb": 120}
    assert job["parameters"] == {"lr": 0.1}
    assert [(i["name"], i["dataset"], i["version"]) for i in job["inputs"]] == [
        ("clean", "clean", 1),
        ("weights", "raw", 1),
    ]
    assert job["outputs"] == [
        {"dataset": "model", "version": 1, "sha256": job["outputs"][0]["sha256"], "size": 9}
    ]
    # The rerun body pins the very same versions.
    assert body["rerun"]["inputs"] == [
        {"dataset": "clean", "version": 1, "name": "clean"},
        {"dataset": "raw", "version": 1, "name": "weights"},
    ]
    assert body["rerun"]["parameters"] == {"lr": 0.1}
    # Other members' jobs are not theirs to open; admins may.
    assert api.get(f"/orgs/{world.slug}/jobs/{chain.job2.id}/lineage", world.bob).status_code == 404
    assert (
        api.get(f"/orgs/{world.slug}/jobs/{chain.job2.id}/lineage", world.admin).status_code == 200
    )


def test_unreadable_versions_are_hidden(api: ApiClient, world: World) -> None:
    chain = build_chain(api, world)
    api.put(f"{ds(world, 'raw')}/access", world.alice, json={"visibility": "restricted"})
    graph = api.get(f"/orgs/{world.slug}/lineage", world.bob, params={"dataset": "clean"}).json()
    hidden = [n for n in graph["nodes"] if n.get("hidden")]
    assert len(hidden) == 1 and set(hidden[0]) == {"id", "type", "hidden"}
    assert "raw" not in json.dumps(graph)
    # Bob's view of alice's job: who and what, not its parameters.
    [job1] = [n for n in graph["nodes"] if n.get("job_id") == str(chain.job1.id)]
    assert job1["user"] == world.alice.name and "parameters" not in job1
    # Alice sees it all.
    graph = api.get(f"/orgs/{world.slug}/lineage", world.alice, params={"dataset": "clean"}).json()
    assert not any(n.get("hidden") for n in graph["nodes"])


def test_metadata_is_merged(api: ApiClient, world: World) -> None:
    job = make_job(api.db, world.slug, world.alice.id, state="running")
    url = f"/api/v1/orgs/{world.slug}/jobs/{job.id}/metadata"
    flow = as_job(job_token(api.db, job))  # only the job itself writes its metadata
    r = api.client.post(url, headers=flow, json={"values": {"loss": 0.5, "note": "a"}})
    assert r.status_code == 200, r.text
    r = api.client.post(url, headers=flow, json={"values": {"loss": 0.25}})
    assert r.json()["metadata"] == {"loss": 0.25, "note": "a"}
    for member in (world.alice, world.bob, world.owner):  # its user and the owner too
        r = api.client.post(url, headers=member.headers, json={"values": {"x": 1}})
        assert r.status_code == 403 and r.json()["error"] == "lineage_job_only", r.text
    too_big = {"values": {"blob": "x" * (lineage.MAX_METADATA_BYTES + 1)}}
    assert api.client.post(url, headers=flow, json=too_big).status_code == 422
    record = api.get(f"/orgs/{world.slug}/jobs/{job.id}/lineage", world.alice).json()["job"]
    assert record["metadata"] == {"loss": 0.25, "note": "a"}


# --------------------------------------------------------------------------- the CLI


@pytest.fixture
def served(sqlite_database: Database) -> Any:
    with serve_in_thread(create_app(get_settings(), sqlite_database)) as url:
        yield url.removesuffix("/api/v1")


def run(url: str, token: str, slug: str, tmp: Path, *args: str) -> Any:
    env = {
        "CSHARE_CONFIG": str(tmp / "cli.toml"),
        "CSHARE_API_URL": url,
        "CSHARE_TOKEN": token,
        "CSHARE_ORG": slug,
        "COLUMNS": "240",
    }
    result = CliRunner().invoke(cli_app, list(args), env=env)
    assert result.exit_code == 0, (args, result.stdout, result.stderr, result.exception)
    return result


def test_cli_datasets_and_lineage(served: str, sqlite_database: Database, tmp_path: Path) -> None:
    with ApiClient.start(sqlite_database) as api:
        alice = api.signup()
        slug = api.create_org(alice)
        w = World(slug, alice, alice, alice, alice)

        def cli(*args: str) -> Any:
            return run(served, alice.token, slug, tmp_path, *args)

        src = tmp_path / "rows.csv"
        src.write_bytes(b"a,b\n1,2\n" * 50_000)
        out = cli("dataset", "upload", "raw", str(src), "--create", "--json")
        assert json.loads(out.stdout)["version"] == 1
        folder = tmp_path / "corpus"
        (folder / "sub").mkdir(parents=True)
        (folder / "one.txt").write_text("one")
        (folder / "sub" / "two.txt").write_text("two")
        cli("dataset", "create", "corpus", "--description", "texts")
        v = json.loads(cli("dataset", "upload", "corpus", str(folder), "--json").stdout)
        assert (v["kind"], v["file_count"]) == ("directory", 2)

        listed = cli("dataset", "list").stdout
        assert "raw" in listed and "corpus" in listed
        assert "dir (2 files)" in cli("dataset", "show", "corpus").stdout

        got = tmp_path / "got.csv"
        cli("dataset", "download", "raw@1", "-o", str(got))
        assert got.read_bytes() == src.read_bytes()
        got_dir = tmp_path / "got-corpus"
        cli("dataset", "download", "corpus", "-o", str(got_dir))
        assert (got_dir / "sub" / "two.txt").read_text() == "two"
        assert not list(tmp_path.glob(".*.part"))

        job = make_job(sqlite_database, slug, alice.id, inputs=["raw@1"], state="running")
        create(api, w, alice, "summary")
        r = upload_as_job(api, w, job_token(sqlite_database, job), "summary", b"sum")
        assert r.status_code == 201, r.text
        tree = cli("lineage", "summary").stdout
        assert "summary@1" in tree and "raw@1" in tree and "came from" in tree
        dot = cli("lineage", "--job", str(job.id), "--dot").stdout
        assert dot.startswith("digraph lineage {") and "->" in dot and '"input"' in dot

        cli("dataset", "access", "corpus", "--restricted")
        assert "restricted" in cli("dataset", "show", "corpus").stdout
        deleted = cli("dataset", "delete", "raw", "--yes").stdout
        assert "kept as records" in deleted
        assert "summary@1" in cli("lineage", "--job", str(job.id)).stdout


def test_unknown_job_lineage_is_404(api: ApiClient, world: World) -> None:
    r = api.get(f"/orgs/{world.slug}/jobs/{uuid.uuid4()}/lineage", world.alice)
    assert r.status_code == 404


# --------------------------------------------------------------------------- flow side

FLOW_SCRIPT = """
import json, os, sys
from pathlib import Path
from flows.runtime import input_path, log_metadata, save_output

images = input_path("images")
labels = input_path("labels")
report = {"images": images.read_bytes().decode(), "labels": sorted(
    p.relative_to(labels).as_posix() for p in labels.rglob("*") if p.is_file())}
for target in (images, labels / "new-file.txt", labels / "a.txt"):
    try:
        with open(target, "a") as f:
            f.write("changed")
        report.setdefault("written", []).append(str(target))
    except OSError as exc:
        report.setdefault("refused", []).append(type(exc).__name__)
out = Path(sys.argv[1]) / "result.txt"
out.write_text(report["images"].upper())
report["version"] = save_output(out, dataset="results")["version"]
report["metadata"] = log_metadata({"rows": 3, "note": "ok"})
print(json.dumps(report))
"""


def test_job_inputs_read_only_outputs_and_lineage_without_the_agent(
    sqlite_database: Database, tmp_path: Path
) -> None:
    """What the agent does around a flow, done here by hand: materialise two inputs
    (a file and a directory) read-only, run a flow process that reads them, fails to
    write them, saves an output and logs metadata through flows.runtime; the lineage
    then reads input -> job -> output. A second job reuses the machine's cache."""
    app = create_app(get_settings(), sqlite_database)
    with serve_in_thread(app) as url, ApiClient.start(sqlite_database) as api:
        base = url.removesuffix("/api/v1")
        alice = api.signup()
        slug = api.create_org(alice)
        w = World(slug, alice, alice, alice, alice)
        create(api, w, alice, "images")
        upload(api, w, alice, "images", b"pixels")
        create(api, w, alice, "labels")
        api.post(
            f"{ds(w, 'labels')}/versions",
            alice,
            content=tar_of({"a.txt": b"cat", "sub/b.txt": b"dog"}),
            headers={"Content-Type": "application/x-tar"},
        )
        job = make_job(
            sqlite_database, slug, alice.id, inputs=["images", "labels@1"], state="running"
        )
        token = job_token(sqlite_database, job)
        cache = tmp_path / "cache"
        job_dir = tmp_path / "job1"
        job_dir.mkdir()
        prepared = materialize.materialize_job(base, slug, str(job.id), token, job_dir, cache)
        try:
            assert sorted(prepared.fetched) == ["images", "labels"]
            image = prepared.paths["images"]
            assert image.read_bytes() == b"pixels"
            assert oct(image.stat().st_mode & 0o777) == "0o444"
            assert oct(prepared.paths["labels"].stat().st_mode & 0o777) == "0o555"
            env = {**os.environ, **prepared.env, "PYTHONPATH": str(Path.cwd())}
            env.pop("CSHARE_TOKEN", None)
            done = subprocess.run(
                [sys.executable, "-c", FLOW_SCRIPT, str(job_dir)],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            report = json.loads(done.stdout.strip().splitlines()[-1])
        finally:
            materialize.release(job_dir)
        assert report["images"] == "pixels" and report["labels"] == ["a.txt", "sub/b.txt"]
        assert "written" not in report and len(report["refused"]) == 3  # read-only inputs
        assert report["version"] == 1 and report["metadata"] == {"rows": 3, "note": "ok"}
        assert not (job_dir / "inputs").exists()

        graph = api.get(f"/orgs/{slug}/lineage", alice, params={"dataset": "results"}).json()
        j = f"job:{job.id}"
        assert edges(graph) == {
            ("images@1", j, "input"),
            ("labels@1", j, "input"),
            (j, "results@1", "output"),
        }

        # A second job on this machine: both inputs come from the cache, verified.
        job2 = make_job(
            sqlite_database, slug, alice.id, inputs=["images@1", "labels@1"], state="running"
        )
        token2 = job_token(sqlite_database, job2)
        job2_dir = tmp_path / "job2"
        job2_dir.mkdir()
        again = materialize.materialize_job(base, slug, str(job2.id), token2, job2_dir, cache)
        materialize.release(job2_dir)
        assert again.fetched == []
        # A cache entry changed behind its back is fetched again, not handed out.
        cached = materialize.InputCache(cache).path(hashlib.sha256(b"pixels").hexdigest())
        cached.chmod(0o644)
        cached.write_bytes(b"tampered")
        job3_dir = tmp_path / "job3"
        job3_dir.mkdir()
        third = materialize.materialize_job(base, slug, str(job2.id), token2, job3_dir, cache)
        try:
            assert third.fetched == ["images"]
            assert third.paths["images"].read_bytes() == b"pixels"
        finally:
            materialize.release(job3_dir)


def test_the_machine_reports_code_version_and_resources(
    sqlite_database: Database, tmp_path: Path
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "flow.py").write_text("print('v1')\n")
    bundle = codeversion.code_version(code)
    assert bundle["source"] == "bundle" and bundle["files"] == 1
    subprocess.run(["git", "init", "-q", str(code)], check=True)
    subprocess.run(
        [
            "git",
            "-C",
            str(code),
            "-c",
            "user.email=a@b",
            "-c",
            "user.name=a",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "init",
        ],
        check=True,
    )
    subprocess.run(["git", "-C", str(code), "add", "flow.py"], check=True)
    git = codeversion.code_version(code)
    assert git["source"] == "git" and len(git["git_commit"]) == 40 and git["git_dirty"] is True

    app = create_app(get_settings(), sqlite_database)
    with serve_in_thread(app) as url, ApiClient.start(sqlite_database) as api:
        alice = api.signup()
        slug = api.create_org(alice)
        job = make_job(sqlite_database, slug, alice.id, state="running")
        token = job_token(sqlite_database, job)
        materialize.report_run(
            url,
            slug,
            str(job.id),
            token,
            code_dir=code,
            machine={"name": "box-1", "hardware": {"cpus": 2}},
            resources_used={"max_rss_mb": 42},
        )
        record = api.get(f"/orgs/{slug}/jobs/{job.id}/lineage", alice).json()["job"]
    assert record["code"] == git
    assert record["machine"] == {"name": "box-1", "hardware": {"cpus": 2}}
    assert record["resources"]["used"] == {"max_rss_mb": 42}
