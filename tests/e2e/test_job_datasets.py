"""Datasets end to end: a job with two inputs runs on a real agent.

On the agents' stack (tests/e2e/test_agents.py: Prefect server, `cshare server`, `cshare
agent start`, all real processes): a member uploads a file and a directory, submits a
job that reads both as inputs; the agent materialises them read-only (the flow's write
attempts fail), the flow saves an output and logs metadata through `flows.runtime`;
lineage shows input -> job -> output; the job's rerun body runs again on the same pinned
versions and reproduces the output byte for byte. A member outside a restricted dataset
cannot submit a job that reads it (404).
"""

from __future__ import annotations

import io
import tarfile
import uuid
from typing import Any

import pytest

from tests.e2e.test_agents import HERE, Stack, stack, wait_for

__all__ = ["stack"]  # the agents' module-scoped stack fixture

pytestmark = [pytest.mark.prefect, pytest.mark.xdist_group("prefect"), pytest.mark.slow]


def tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def upload(stack: Stack, who: dict[str, str], name: str, body: bytes, media: str) -> Any:
    r = stack.http.post(
        f"/orgs/{stack.slug}/datasets/{name}/versions",
        content=body,
        headers={**who, "Content-Type": media},
    )
    assert r.status_code == 201, r.text
    return r.json()


def edges(graph: dict[str, Any]) -> set[tuple[str, str, str]]:
    label = {
        n["id"]: ("job" if n["type"] == "job" else f"{n['dataset']}@{n['version']}")
        for n in graph["nodes"]
    }
    return {(label[e["source"]], label[e["target"]], e["kind"]) for e in graph["edges"]}


def test_job_with_two_inputs_runs_read_only_and_reproduces(stack: Stack) -> None:
    stack.start_agent("data-box", "cpu", 1)
    machine = wait_for("data-box to register", lambda: stack.machines().get("data-box"), 60)
    stack.ok("POST", f"/orgs/{stack.slug}/machines/{machine['id']}/approve", stack.owner)
    stack.ok(
        "POST",
        f"/orgs/{stack.slug}/deployments",
        stack.owner,
        json={
            "name": "uses-inputs",
            "entrypoint": "dataset_flows.py:uses_inputs",
            "machine_type": "cpu",
            "path": str(HERE),
        },
    )
    tag = uuid.uuid4().hex[:6]
    images, labels, results = f"e2e-images-{tag}", f"e2e-labels-{tag}", f"e2e-results-{tag}"
    for name in (images, labels, results):
        stack.ok("POST", f"/orgs/{stack.slug}/datasets", stack.member, json={"name": name})
    upload(stack, stack.member, images, b"pixels", "application/octet-stream")
    upload(
        stack,
        stack.member,
        labels,
        tar_of({"a.txt": b"cat", "sub/b.txt": b"dog"}),
        "application/x-tar",
    )
    inputs = [
        {"dataset": images, "name": "images"},
        {"dataset": labels, "version": 1, "name": "labels"},
    ]

    # A member outside a restricted dataset cannot submit a job that reads it: admission's
    # dataset_access rule refuses it.
    secret = f"e2e-secret-{tag}"
    stack.ok(
        "POST",
        f"/orgs/{stack.slug}/datasets",
        stack.owner,
        json={"name": secret, "visibility": "restricted"},
    )
    upload(stack, stack.owner, secret, b"classified", "application/octet-stream")
    r = stack.call(
        "POST",
        f"/orgs/{stack.slug}/jobs",
        stack.member,
        json={"deployment": "uses-inputs", "inputs": [{"dataset": secret, "name": "images"}]},
    )
    assert r.status_code == 403 and r.json()["error"] == "dataset_access", r.text

    job_id = stack.submit("uses-inputs", inputs=inputs, parameters={"output": results})
    job = stack.wait_final(job_id, 180)
    assert job["state"] == "completed", (job, stack.agent_log("data-box"))

    lineage = stack.ok("GET", f"/orgs/{stack.slug}/jobs/{job_id}/lineage", stack.member)
    assert lineage["job"]["metadata"] == {"refused_writes": 3, "files": 2}
    # The series the flow logged with log_metadata(step=..., loss=...) on the agent.
    metrics = stack.ok("GET", f"/orgs/{stack.slug}/jobs/{job_id}/metrics", stack.member)
    (loss,) = metrics["series"]
    assert loss["key"] == "loss" and [p["step"] for p in loss["points"]] == [0, 1, 2, 3, 4]
    assert loss["latest"]["value"] == 0.2
    assert metrics["latest"] == {"loss": 0.2, "refused_writes": 3, "files": 2}
    assert [(i["name"], i["version"]) for i in lineage["job"]["inputs"]] == [
        ("images", 1),
        ("labels", 1),
    ]
    graph = stack.ok(
        "GET", f"/orgs/{stack.slug}/lineage", stack.member, params={"dataset": results}
    )
    assert edges(graph) == {
        (f"{images}@1", "job", "input"),
        (f"{labels}@1", "job", "input"),
        ("job", f"{results}@1", "output"),
    }
    first = stack.ok("GET", f"/orgs/{stack.slug}/datasets/{results}", stack.member)["versions"]

    # Rerun: the recorded body, on the same pinned versions, reproduces the output.
    upload(stack, stack.member, images, b"newer pixels", "application/octet-stream")
    rerun = lineage["rerun"]
    again_id = stack.submit(
        rerun["deployment"], parameters=rerun["parameters"], inputs=rerun["inputs"]
    )
    again = stack.wait_final(again_id, 180)
    assert again["state"] == "completed", (again, stack.agent_log("data-box"))
    versions = stack.ok("GET", f"/orgs/{stack.slug}/datasets/{results}", stack.member)["versions"]
    assert [v["version"] for v in versions] == [2, 1]
    assert versions[0]["sha256"] == first[0]["sha256"]  # same inputs, same bytes
    assert versions[0]["produced_by_job_id"] == again_id
