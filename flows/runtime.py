"""Helpers for flow code running as a Compute Share job: inputs, outputs, metadata.

    from flows.runtime import input_path, log_metadata, save_output

    @flow
    def train(epochs: int = 3) -> None:
        images = input_path("images")          # read-only, verified, on this machine
        ...
        for epoch in range(epochs):
            log_metadata(step=epoch, loss=1.0 / (epoch + 1))  # a series, charted
        log_metadata({"accuracy": 0.93, "epochs": epochs})
        save_output("model.pt", dataset="models")  # a new version, produced by this job

This module runs on members' machines and imports no server code: it talks to the API
over HTTP with what the agent puts in the flow's environment, and shares only the
stdlib-only wire format (`datasets.wire`) with the server:

- `CSHARE_API_URL`, `CSHARE_ORG`: the API and the organization (slug);
- `CSHARE_JOB_ID` and `CSHARE_JOB_TOKEN`: this job, and the job's own credential. It
  reads only the job's pinned inputs, writes only its outputs (the names declared at
  submission, if any; each once: a second `save_output` to the same dataset is refused
  with 409) and its own metadata, with the job user's current rights on top; every
  other API call refuses it (403). It is revoked when the job ends and expires at the
  runtime limit plus `CSHARE_JOB_TOKEN_GRACE_S`. Without a job token, `CSHARE_TOKEN` (a
  member's own token) is used to try a flow by hand: it uploads plain versions (not
  outputs of any job), and `log_metadata` is skipped (only a job writes its lineage);
- `CSHARE_INPUTS_DIR`: where the agent materialised the inputs, with an index
  (`.cshare-inputs.json`) from input name to path.

Outside a job (plain `prefect` or `python`), `save_output` and `log_metadata` log a
warning and do nothing when no API is configured, so flows run unchanged anywhere;
`input_path` needs `CSHARE_INPUTS_DIR` (point it at a folder holding the inputs).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from datasets import wire

log = logging.getLogger("cshare.runtime")

INDEX_FILE = ".cshare-inputs.json"
API_PREFIX = "/api/v1"
ATTEMPTS = 4
TIMEOUT = httpx.Timeout(300.0, connect=10.0)


class RuntimeProblem(RuntimeError):
    """A runtime helper could not do what was asked; the message says why."""


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _seg(value: str) -> str:
    return quote(value, safe="")


# ----------------------------------------------------------------------------- inputs


def input_path(name: str) -> Path:
    """The local, read-only path of the job input `name` (a file, or a directory).

    The agent fetched and verified it before the flow started. Writing to it fails:
    write results elsewhere and `save_output` them.
    """
    root = _env("CSHARE_INPUTS_DIR")
    if root is None:
        raise RuntimeProblem(
            f"input_path({name!r}) outside a Compute Share job: CSHARE_INPUTS_DIR is not set. "
            "To try the flow by hand, set it to a folder that holds the input."
        )
    base = Path(root)
    index_file = base / INDEX_FILE
    if index_file.is_file():
        index: dict[str, Any] = json.loads(index_file.read_text(encoding="utf-8"))
        entry = index.get(name)
        if entry is None:
            known = ", ".join(sorted(index)) or "none"
            raise RuntimeProblem(f"This job has no input named {name!r} (inputs: {known}).")
        return base / str(entry["path"])
    candidate = base / name
    if wire.safe_path(name) != name or not candidate.exists():
        raise RuntimeProblem(f"No input named {name!r} under {base}.")
    return candidate


# ----------------------------------------------------------------------------- the API


class _Api:
    def __init__(
        self, url: str, token: str, org: str, job_id: str | None, *, job_token: bool
    ) -> None:
        self.url = url.rstrip("/").removesuffix(API_PREFIX)
        self.org = org
        self.job_id = job_id
        self.job_token = job_token
        self.http = httpx.Client(
            base_url=self.url + API_PREFIX,
            timeout=TIMEOUT,
            headers={"Authorization": f"Bearer {token}", "User-Agent": "cshare-runtime/0.1"},
        )

    def __enter__(self) -> _Api:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.http.close()


def _api(purpose: str) -> _Api | None:
    url, org = _env("CSHARE_API_URL"), _env("CSHARE_ORG")
    job_token = _env("CSHARE_JOB_TOKEN")
    token = job_token or _env("CSHARE_TOKEN")
    if url is None or org is None or token is None:
        log.warning(
            "%s skipped: not running as a Compute Share job "
            "(CSHARE_API_URL, CSHARE_ORG and CSHARE_JOB_TOKEN are not all set)",
            purpose,
        )
        return None
    return _Api(url, token, org, _env("CSHARE_JOB_ID"), job_token=job_token is not None)


def _retry(
    what: str, call: Callable[[], httpx.Response], *, accept: tuple[int, ...] = ()
) -> httpx.Response:
    """Send, retrying connection failures and 503s with backoff; errors become
    `RuntimeProblem` with the server's sentence."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            response = call()
        except httpx.TransportError as exc:
            if attempt == ATTEMPTS:
                raise RuntimeProblem(f"{what} failed: {exc or type(exc).__name__}") from None
        else:
            if response.status_code != 503 or attempt == ATTEMPTS:
                if response.is_success or response.status_code in accept:
                    return response
                try:
                    detail = response.json().get("detail")
                except ValueError:
                    detail = None
                raise RuntimeProblem(
                    f"{what} failed: HTTP {response.status_code}"
                    + (f": {detail}" if detail else "")
                )
        time.sleep(min(2**attempt * 0.25, 5.0))
    raise AssertionError("unreachable")


# ----------------------------------------------------------------------------- outputs


def save_output(
    path: str | os.PathLike[str],
    *,
    dataset: str,
    description: str = "",
    create: bool = True,
) -> dict[str, Any] | None:
    """Upload `path` (a file, or a directory as a whole) as a new version of `dataset`,
    recorded as produced by this job (once per dataset and job). Creates the dataset
    first when `create` and it does not exist. Returns the version (`{"dataset",
    "version", "sha256", ...}`), or None when not running as a job.

    The upload streams from disk and announces its checksum; the server stores it
    only if every byte arrived intact. Retried on connection failures.
    """
    source = Path(path)
    if not source.exists():
        raise RuntimeProblem(f"save_output: {source} does not exist.")
    api = _api(f"save_output({str(source)!r}, dataset={dataset!r})")
    if api is None:
        return None
    with api:
        if create:
            # 409: it exists (or was created meanwhile by a parallel job): just as good.
            # (No lookup first: a job token may not read datasets other than its inputs.)
            _retry(
                f"creating dataset {dataset}",
                lambda: api.http.post(f"/orgs/{_seg(api.org)}/datasets", json={"name": dataset}),
                accept=(409,),
            )
        params: dict[str, str] = {"filename": source.resolve().name or dataset}
        if description:
            params["description"] = description
        if api.job_id and api.job_token:
            params["job"] = api.job_id  # implied by the job token; stated for the log
        if source.is_dir():
            files = wire.walk_directory(source)
            sha = wire.manifest_sha256(wire.directory_manifest(files))
            length = wire.tar_length([(f.path, f.size) for f in files])

            def body() -> Any:
                return wire.iter_tar_from_files(files)

            media = wire.TAR_MEDIA_TYPE
        else:
            sha = wire.sha256_file(source)
            length = source.stat().st_size

            def body() -> Any:
                return wire.file_chunks(source)

            media = wire.FILE_MEDIA_TYPE
        headers = {
            "Content-Type": media,
            "Content-Length": str(length),
            wire.SHA256_HEADER: sha,
        }
        url = f"/orgs/{_seg(api.org)}/datasets/{_seg(dataset)}/versions"
        response = _retry(
            f"uploading {source} to {dataset}",
            lambda: api.http.post(url, content=body(), headers=headers, params=params),
        )
        version: dict[str, Any] = response.json()
        log.info("saved %s as %s@%s (sha256 %s)", source, dataset, version["version"], sha)
        return version


# ----------------------------------------------------------------------------- metadata


def log_metadata(
    values: Mapping[str, Any] | None = None, /, *, step: int | None = None, **more: Any
) -> dict[str, Any] | None:
    """Record metrics and free-form metadata on this job.

    - `log_metadata({"accuracy": 0.93, "note": "baseline"})` or `log_metadata(accuracy=0.93)`:
      merged with what was logged before (later keys win). Values must be JSON (others
      are stored as text).
    - `log_metadata(step=i, loss=0.41, acc=0.87)`: one point per value of the job's
      metric series over steps (numbers only), charted on the job's page and compared
      across jobs. Logging a step again replaces its values. Bounded: at most 50 series
      per job and 10,000 points per series; past that the call fails (log every n-th step).

    Returns the job's metadata, or None when not running as a job."""
    merged_values = {**dict(values or {}), **more}
    api = _api("log_metadata")
    if api is None:
        return None
    if api.job_id is None or not api.job_token:
        # Only the job's own token writes its record (a member's token is refused).
        log.warning("log_metadata skipped: CSHARE_JOB_ID and CSHARE_JOB_TOKEN are not both set")
        return None
    body: dict[str, Any] = {"values": json.loads(json.dumps(merged_values, default=str))}
    if step is not None:
        body["step"] = step
    with api:
        job_id = api.job_id
        response = _retry(
            "logging metadata",
            lambda: api.http.post(f"/orgs/{_seg(api.org)}/jobs/{_seg(job_id)}/metadata", json=body),
        )
        merged: dict[str, Any] = response.json()["metadata"]
        return merged
