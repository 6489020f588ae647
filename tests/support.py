"""Test helpers: an in-process API client that knows how to make users and orgs."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.app import create_app
from orgs import security
from orgs.config import get_settings
from orgs.db import Database
from orgs.models import Machine, Organization

PREFIX = "/api/v1"


def password_for(name: str) -> str:
    return f"pw-{name}-secret"


@dataclass
class Person:
    id: str
    name: str
    email: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class ApiClient:
    def __init__(self, client: TestClient, db: Database) -> None:
        self.client = client
        self.db = db

    @classmethod
    @contextmanager
    def start(cls, db: Database) -> Iterator[ApiClient]:
        app = create_app(get_settings(), db)
        with TestClient(app, raise_server_exceptions=False) as client:
            yield cls(client, db)

    def set_settings(self, **changes: Any) -> None:
        """Change the running app's settings, as an operator restarting it with other
        environment variables would (requests read `app.state.settings`)."""
        app: Any = self.client.app
        app.state.settings = app.state.settings.model_copy(update=changes)

    def request(
        self, method: str, path: str, who: Person | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if who is not None:
            headers.update(who.headers)
        response: httpx.Response = self.client.request(
            method, PREFIX + path, headers=headers, **kwargs
        )
        return response

    def get(self, path: str, who: Person | None = None, **kw: Any) -> httpx.Response:
        return self.request("GET", path, who, **kw)

    def post(self, path: str, who: Person | None = None, **kw: Any) -> httpx.Response:
        return self.request("POST", path, who, **kw)

    def patch(self, path: str, who: Person | None = None, **kw: Any) -> httpx.Response:
        return self.request("PATCH", path, who, **kw)

    def put(self, path: str, who: Person | None = None, **kw: Any) -> httpx.Response:
        return self.request("PUT", path, who, **kw)

    def delete(self, path: str, who: Person | None = None, **kw: Any) -> httpx.Response:
        return self.request("DELETE", path, who, **kw)

    def signup(self, name: str | None = None) -> Person:
        name = name or f"u{uuid.uuid4().hex[:10]}"
        email = f"{name}@example.test"
        r = self.post(
            "/auth/signup", json={"email": email, "name": name, "password": password_for(name)}
        )
        assert r.status_code == 201, r.text
        body = r.json()
        return Person(id=body["user"]["id"], name=name, email=email, token=body["token"])

    def create_org(self, owner: Person, name: str | None = None, **extra: Any) -> str:
        name = name or f"Org {uuid.uuid4().hex[:8]}"
        r = self.post("/orgs", owner, json={"name": name, **extra})
        assert r.status_code == 201, r.text
        slug: str = r.json()["slug"]
        return slug

    def add_member(self, slug: str, admin: Person, person: Person, role: str = "member") -> None:
        """Invite `person` with `role` and accept, through the public API."""
        r = self.post(f"/orgs/{slug}/invitations", admin, json={"role": role, "max_uses": 1})
        assert r.status_code == 201, r.text
        code = r.json()["code"]
        r = self.post(f"/invitations/{code}/accept", person)
        assert r.status_code in (200, 201), r.text


@contextmanager
def serve_in_thread(app: FastAPI, *, timeout_s: float = 30.0) -> Iterator[str]:
    """Run `app` under a real uvicorn server on 127.0.0.1 in a background thread.

    Yields the base URL (API prefix included). The in-process TestClient serializes
    requests, so tests of real concurrency talk to this server instead.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # the kernel picks a free port; no race with others
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}{PREFIX}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout_s)
        sock.close()


def insert_machine(db: Database, slug: str, owner_id: str, name: str | None = None) -> str:
    """A machine row owned by `owner_id` in org `slug`, straight into the database.

    For tests of what happens to machines (cascades, isolation) that do not need the
    registration flow.
    """
    with db.transaction() as s:
        org = s.scalars(select(Organization).where(Organization.slug == slug)).one()
        machine = Machine(
            org_id=org.id,
            owner_id=uuid.UUID(owner_id),
            name=name or f"m-{uuid.uuid4().hex[:8]}",
            machine_type="cpu",
            hardware={},
            slots=1,
            status="approved",
            token_hash=security.hash_token(security.new_token("machine")),
        )
        s.add(machine)
        s.flush()
        return str(machine.id)
