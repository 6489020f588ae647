"""Every kind of data store with a real agent: inputs read read-only on a machine, and
the job's output written to the project's default store.

On the agents' stack (tests/e2e/test_agents.py), per store kind (the installation's local
store, S3 on moto, Swift as S3 on moto, Azure on Azurite, GCS on the emulator): the
organization's store and the project's default store are set to it, a member uploads a
file and a directory, a job of a deployment in the project reads both through
`flows.runtime.input_path` (writes refused), and its `save_output` lands in the project's
store, found there under its content address; downloading the output verifies it.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest

from datasets.azure import AzureKeys, AzureStorage
from datasets.gcs import GcsStorage
from datasets.s3 import S3Keys, S3Storage
from datasets.storage import Storage
from tests.azurite_server import ACCOUNT, ACCOUNT_KEY
from tests.e2e.test_agents import HERE, Stack, stack, wait_for
from tests.e2e.test_job_datasets import tar_of, upload
from tests.integration.test_datastores import KINDS, ORG_KEY, ORG_SECRET, _store
from tests.s3_server import S3_REGION

__all__ = ["stack"]

pytestmark = [
    pytest.mark.prefect,
    pytest.mark.xdist_group("prefect"),
    pytest.mark.slow,
    pytest.mark.timeout(900),
]


def direct(body: dict[str, Any]) -> Storage | None:
    """The store as the test reaches it itself (not through the API)."""
    kind = body["kind"]
    if kind in ("s3", "swift"):
        return S3Storage(
            body["bucket"],
            endpoint_url=body["endpoint_url"],
            region=S3_REGION,
            keys=S3Keys(ORG_KEY, ORG_SECRET),
            isolated=True,
        )
    if kind == "azure":
        return AzureStorage(
            ACCOUNT,
            body["container"],
            prefix=body.get("prefix", ""),
            endpoint_url=body["endpoint_url"],
            keys=AzureKeys(account_key=ACCOUNT_KEY),
        )
    if kind == "gcs":
        return GcsStorage(body["bucket"], endpoint_url=body["endpoint_url"])
    return None


@pytest.mark.parametrize("kind", KINDS)
def test_inputs_and_outputs_through_each_store(
    stack: Stack, kind: str, request: pytest.FixtureRequest
) -> None:
    body = _store(kind, request).body
    if not stack.machines().get("store-box"):
        stack.start_agent("store-box", "cpu", 1)
        machine = wait_for("store-box to register", lambda: stack.machines().get("store-box"), 60)
        stack.ok("POST", f"/orgs/{stack.slug}/machines/{machine['id']}/approve", stack.owner)
    tag = uuid.uuid4().hex[:6]
    project = f"p-{kind}-{tag}"
    stack.ok("POST", f"/orgs/{stack.slug}/projects", stack.owner, json={"name": project})
    stack.ok("PUT", f"/orgs/{stack.slug}/datastore", stack.owner, json=body)
    stack.ok("PUT", f"/orgs/{stack.slug}/projects/{project}/datastore", stack.owner, json=body)
    deployment = f"inputs-{kind}-{tag}"
    stack.ok(
        "POST",
        f"/orgs/{stack.slug}/deployments",
        stack.owner,
        json={
            "name": deployment,
            "entrypoint": "dataset_flows.py:uses_inputs",
            "machine_type": "cpu",
            "path": str(HERE),
            "project": project,
        },
    )
    images, labels, results = f"img-{tag}", f"lab-{tag}", f"res-{tag}"
    for name in (images, labels, results):
        stack.ok("POST", f"/orgs/{stack.slug}/datasets", stack.member, json={"name": name})
    pixels = f"pixels {kind}".encode()
    upload(stack, stack.member, images, pixels, "application/octet-stream")
    upload(stack, stack.member, labels, tar_of({"a.txt": b"cat"}), "application/x-tar")
    store = direct(body)
    if store is not None:  # the inputs are in this store
        assert store.exists(hashlib.sha256(pixels).hexdigest())

    job_id = stack.submit(
        deployment,
        inputs=[{"dataset": images, "name": "images"}, {"dataset": labels, "name": "labels"}],
        parameters={"output": results},
    )
    job = stack.wait_final(job_id, 180)
    assert job["state"] == "completed", (job, stack.agent_log("store-box"))
    lineage = stack.ok("GET", f"/orgs/{stack.slug}/jobs/{job_id}/lineage", stack.member)
    assert lineage["job"]["metadata"] == {"refused_writes": 3, "files": 1}

    version = stack.ok("GET", f"/orgs/{stack.slug}/datasets/{results}", stack.member)["versions"][0]
    assert version["produced_by_job_id"] == job_id
    r = stack.http.get(
        f"/orgs/{stack.slug}/datasets/{results}/versions/1/download", headers=stack.member
    )
    assert r.status_code == 200, r.text
    assert hashlib.sha256(r.content).hexdigest() == version["sha256"]
    assert r.content == f"pixels {kind}|a.txt\n".encode()
    if store is not None:  # the output is in the project's store
        assert store.exists(version["sha256"])
    stack.ok("PUT", f"/orgs/{stack.slug}/datastore", stack.owner, json={"kind": "default"})
