"""A real S3 HTTP endpoint for the tests: moto in server mode on 127.0.0.1.

One `ThreadedMotoServer` per test session (per xdist worker), on a port the kernel
picks, started on first use and stopped at the end. The S3 backend is exercised over
HTTP through boto3 exactly as against AWS or MinIO, not through an in-process mock of
boto3. Credentials are moto's dummy ones, put in the environment for the session, the
way real deployments give the API its AWS credentials.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import boto3
import pytest

S3_REGION = "us-east-1"
_DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": S3_REGION,
}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """`http://127.0.0.1:<port>` of a running moto S3 server."""
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in _DUMMY_ENV}
    os.environ.update(_DUMMY_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket on the session's S3 server."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name=S3_REGION).create_bucket(Bucket=name)
    return name
