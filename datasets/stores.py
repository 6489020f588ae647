"""Which store holds an organization's bytes: the default store, or the org's own S3
bucket (or OpenStack Swift through its S3 API), Azure Blob container or GCS bucket.

The default store is the installation's (`CSHARE_DATASET_STORE_URL`, else local disk
under `CSHARE_HOME/datasets`). An admin may give the organization its own S3 bucket
(`PUT /orgs/{org}/datastore`); new uploads go there, while versions already stored keep
reading from where their bytes are (every blob row records its store), so switching
stores never strands data.

An org store is the org's, not the server's: it signs with the access key its admins
stored with it (kept in the row, never returned or logged), or sends unsigned requests
(buckets open to anonymous access). The API server's own AWS credentials (environment,
profiles, instance role) and `profile` are used for it only when the operator sets
`CSHARE_STORE_ALLOW_SERVER_CREDENTIALS`. Its endpoint passes the SSRF guard of
`datasets.endpoints` when saved and on every connection.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from datasets.azure import AzureKeys, AzureStorage
from datasets.endpoints import EndpointPolicy, EndpointRefused
from datasets.gcs import GcsKeys, GcsStorage
from datasets.local import LocalStorage
from datasets.models import DataStore
from datasets.s3 import S3Keys, S3Storage
from datasets.storage import Storage, StorageError
from orgs import audit, secret_box
from orgs.config import Settings
from orgs.context import OrgContext
from policies.errors import Forbidden, Invalid, NotFound

KIND_DEFAULT = "default"
KIND_S3 = "s3"
# OpenStack Swift through its S3 API (s3api middleware): S3 with a required endpoint.
KIND_SWIFT = "swift"
KIND_AZURE = "azure"
KIND_GCS = "gcs"
S3_KINDS = (KIND_S3, KIND_SWIFT)
KINDS = (KIND_DEFAULT, KIND_S3, KIND_SWIFT, KIND_AZURE, KIND_GCS)
_ACCOUNT_RE = re.compile(r"^[a-z0-9]{3,24}$")
_CONTAINER_RE = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION_RE = re.compile(r"^[a-z0-9-]{1,32}$")
_PROFILE_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_KEY_ID_RE = re.compile(r"^[\x21-\x7e]{3,128}$")  # printable ASCII, no spaces
PROFILE_RULE = (
    "Org stores use the API server's AWS profiles only when the operator sets "
    "CSHARE_STORE_ALLOW_SERVER_CREDENTIALS; give the store its own access key instead."
)

_cache: dict[str, Storage] = {}
_cache_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class StoreRef:
    """A store and its backend. `store_id` None = the default store."""

    store_id: uuid.UUID | None
    backend: Storage


def _backend(
    settings: Settings, kind: str, config: dict[str, Any], store: DataStore | None = None
) -> Storage:
    """A backend per configuration, built once per process (S3 clients are costly to
    make and thread-safe to share). `store`: an organization's store (guarded)."""
    keys = _keys(settings, store.credentials) if store is not None else None
    key = json.dumps(
        [
            kind,
            config,
            store is not None,
            _fingerprint(keys),
            settings.store_endpoint_allowlist,
            settings.store_allow_server_credentials,
            settings.dataset_chunk_bytes,
            settings.dataset_s3_part_bytes,
            settings.dataset_s3_concurrency,
            settings.dataset_fsync,
        ],
        sort_keys=True,
    )
    with _cache_lock:
        found = _cache.get(key)
        if found is None:
            found = _cache[key] = _build(settings, kind, config, store is not None, keys)
        return found


def _fingerprint(keys: StoreKeys | None) -> str:
    """Tells keys apart in the cache key without keeping them in it."""
    if keys is None:
        return ""
    return hashlib.sha256(repr(_key_fields(keys)).encode()).hexdigest()


def _key_fields(keys: StoreKeys) -> dict[str, str]:
    if isinstance(keys, S3Keys):
        fields = {
            "access_key_id": keys.access_key_id,
            "secret_access_key": keys.secret_access_key,
            "session_token": keys.session_token,
        }
    elif isinstance(keys, AzureKeys):
        fields = {"account_key": keys.account_key, "sas_token": keys.sas_token}
    else:
        fields = {"service_account_json": keys.service_account_json}
    return {k: v for k, v in fields.items() if v}


# Stored keys are sealed with the server's secrets key (orgs.secret_box, as org secrets
# are): `{"sealed": <token>}` holds the JSON of the keys, never readable in the database.
SEALED: Final = "sealed"


def _unsealed(settings: Settings, credentials: dict[str, Any] | None) -> dict[str, Any] | None:
    if not credentials:
        return None
    if SEALED in credentials:
        return dict(
            json.loads(
                secret_box.decrypt(settings, credentials[SEALED], label="of the org's data store")
            )
        )
    return credentials


StoreKeys = S3Keys | AzureKeys | GcsKeys


def _keys(settings: Settings, credentials: dict[str, Any] | None) -> StoreKeys | None:
    """The stored credentials as the store's kind of keys (which fields they have tells)."""
    credentials = _unsealed(settings, credentials)
    if not credentials:
        return None
    if "service_account_json" in credentials:
        return GcsKeys(credentials["service_account_json"])
    if "account_key" in credentials or "sas_token" in credentials:
        return AzureKeys(credentials.get("account_key"), credentials.get("sas_token"))
    return S3Keys(
        credentials["access_key_id"],
        credentials["secret_access_key"],
        credentials.get("session_token"),
    )


def _org_s3(
    settings: Settings, config: dict[str, Any], keys: StoreKeys | None, **tuning: Any
) -> S3Storage:
    """An organization's S3 store: isolated from the server's credentials unless the
    operator allows them, every connection through the endpoint guard."""
    isolated = not settings.store_allow_server_credentials
    if isolated and config.get("profile"):
        raise Forbidden(PROFILE_RULE, code="store_credentials_refused")
    return S3Storage(
        config["bucket"],
        prefix=config.get("prefix") or "",
        endpoint_url=config.get("endpoint_url"),
        region=config.get("region"),
        profile=config.get("profile"),
        keys=keys if isinstance(keys, S3Keys) else None,
        isolated=isolated,
        guard=EndpointPolicy(settings.store_allowlist()),
        **tuning,
    )


def require_allowed_endpoint(settings: Settings, url: str, *, field: str = "endpoint_url") -> None:
    """Azure and GCS stores connect through their own HTTP stacks, where the per-connection
    guard of `datasets.endpoints` cannot be installed: a custom endpoint (an emulator, a
    sovereign cloud) is accepted only when the operator's allowlist names it (its host,
    or every address it resolves to). Without one, the cloud's fixed public endpoint is
    used. `EndpointRefused` (403) otherwise; callers saving a store turn it into a 422."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    allowlist = settings.store_allowlist()
    if allowlist.allows_host(host):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    found = EndpointPolicy(allowlist).addresses(parts.scheme, host, port)
    if not all(allowlist.allows_address(a) for a in found):
        raise EndpointRefused(
            f"A custom endpoint for an Azure or GCS store ('{host}') must be allowed by the "
            "operator (CSHARE_STORE_ENDPOINT_ALLOWLIST); leave endpoint_url out to use the "
            "cloud's own endpoint."
        )


def _org_azure(
    settings: Settings, config: dict[str, Any], keys: StoreKeys | None, **tuning: Any
) -> AzureStorage:
    if config.get("endpoint_url"):
        require_allowed_endpoint(settings, config["endpoint_url"])
    return AzureStorage(
        config["account"],
        config["container"],
        prefix=config.get("prefix") or "",
        endpoint_url=config.get("endpoint_url"),
        keys=keys if isinstance(keys, AzureKeys) else None,
        **tuning,
    )


def _org_gcs(
    settings: Settings, config: dict[str, Any], keys: StoreKeys | None, **tuning: Any
) -> GcsStorage:
    if config.get("endpoint_url"):
        require_allowed_endpoint(settings, config["endpoint_url"])
    tuning.pop("concurrency", None)  # resumable uploads send one part at a time
    return GcsStorage(
        config["bucket"],
        prefix=config.get("prefix") or "",
        endpoint_url=config.get("endpoint_url"),
        keys=keys if isinstance(keys, GcsKeys) else None,
        **tuning,
    )


def _build(
    settings: Settings, kind: str, config: dict[str, Any], org: bool, keys: StoreKeys | None
) -> Storage:
    if kind == "local":
        return LocalStorage(
            Path(config["path"]),
            chunk_size=settings.dataset_chunk_bytes,
            fsync=settings.dataset_fsync,
        )
    tuning: dict[str, Any] = {
        "part_size": settings.dataset_s3_part_bytes,
        "concurrency": settings.dataset_s3_concurrency,
        "chunk_size": settings.dataset_chunk_bytes,
    }
    if kind in S3_KINDS and org:
        return _org_s3(settings, config, keys, **tuning)
    if kind == KIND_AZURE and org:
        return _org_azure(settings, config, keys, **tuning)
    if kind == KIND_GCS and org:
        return _org_gcs(settings, config, keys, **tuning)
    if kind == KIND_S3:
        return S3Storage(
            config["bucket"],
            prefix=config.get("prefix") or "",
            endpoint_url=config.get("endpoint_url"),
            region=config.get("region"),
            profile=config.get("profile"),
            **tuning,
        )
    raise ValueError(f"unknown store kind {kind!r}")


def parse_store_url(url: str) -> tuple[str, dict[str, Any]]:
    """`s3://bucket/prefix?endpoint_url=...&region=...&profile=...`, `file:///path` or a
    plain path -> (kind, config)."""
    parts = urlsplit(url)
    if parts.scheme == "s3":
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        return KIND_S3, validate_s3(
            bucket=parts.netloc,
            prefix=parts.path.strip("/"),
            endpoint_url=query.get("endpoint_url"),
            region=query.get("region"),
            profile=query.get("profile"),
        )
    if parts.scheme in ("", "file"):
        return "local", {"path": str(Path(parts.path or url).expanduser())}
    raise ValueError(f"CSHARE_DATASET_STORE_URL: unsupported scheme {parts.scheme!r}")


def default_store(settings: Settings) -> Storage:
    if settings.dataset_store_url:
        kind, config = parse_store_url(settings.dataset_store_url)
        return _backend(settings, kind, config)
    return _backend(settings, "local", {"path": str(settings.resolved_dataset_dir())})


def backend_for(session: Session, settings: Settings, store_id: uuid.UUID | None) -> Storage:
    """The backend of a store by id (None = default), active or not: old bytes stay
    readable after an organization switches stores."""
    if store_id is None:
        return default_store(settings)
    store = session.get(DataStore, store_id)
    if store is None:
        raise NotFound("The data store of this version no longer exists.", code="store_missing")
    return _backend(settings, store.kind, dict(store.config), store)


def active_store(
    session: Session, org_id: uuid.UUID, project_id: uuid.UUID | None = None
) -> DataStore | None:
    """The organization's store (`project_id` None), or the project's own default store
    (None when the project names none)."""
    return session.scalars(
        select(DataStore)
        .where(
            DataStore.org_id == org_id,
            DataStore.active.is_(True),
            DataStore.project_id.is_(None)
            if project_id is None
            else DataStore.project_id == project_id,
        )
        .order_by(DataStore.created_at.desc())
    ).first()


def current_store(
    session: Session, settings: Settings, org_id: uuid.UUID, project_id: uuid.UUID | None = None
) -> StoreRef:
    """Where new uploads go: a job's outputs to its project's default store when the
    project names one (`project_id`), everything else to the organization's store (its
    own, else the installation's)."""
    store = active_store(session, org_id, project_id) if project_id is not None else None
    if store is None:
        store = active_store(session, org_id)
    if store is None:
        return StoreRef(None, default_store(settings))
    return StoreRef(store.id, _backend(settings, store.kind, dict(store.config), store))


# --------------------------------------------------------------- configuration (admins)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def validate_s3(
    *,
    bucket: str,
    prefix: str | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    allow_profile: bool = True,
) -> dict[str, Any]:
    """The S3 settings, checked (each error names its field); None values dropped.
    `allow_profile` False: naming a profile of the server is refused (org stores)."""
    if not _BUCKET_RE.fullmatch(bucket or "") or ".." in bucket:
        raise Invalid(
            "Bucket names are 3-63 lowercase letters, digits, '.' and '-'.", field="bucket"
        )
    if _is_ip(bucket):
        raise Invalid("A bucket name may not look like an IP address.", field="bucket")
    clean_prefix = (prefix or "").strip("/")
    if clean_prefix and (
        len(clean_prefix) > 512
        or any(p in ("", ".", "..") for p in clean_prefix.split("/"))
        or any(ord(c) < 32 or ord(c) == 127 for c in clean_prefix)
    ):
        raise Invalid(
            "The prefix is up to 512 printable characters of '/'-separated names "
            "(no empty, '.' or '..' parts).",
            field="prefix",
        )
    if endpoint_url is not None:
        parts = urlsplit(endpoint_url)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.username
            or parts.password
            or len(endpoint_url) > 512
            or any(ord(c) <= 32 for c in endpoint_url)
        ):
            raise Invalid(
                "endpoint_url is an http(s) URL like https://s3.example.com "
                "(credentials never go in it).",
                field="endpoint_url",
            )
        try:
            parts.port  # noqa: B018  (raises on a bad port)
        except ValueError:
            raise Invalid("endpoint_url has an invalid port.", field="endpoint_url") from None
    if region is not None and not _REGION_RE.fullmatch(region):
        raise Invalid("region is like 'eu-west-1'.", field="region")
    if profile is not None and not allow_profile:
        raise Invalid(PROFILE_RULE, field="profile", code="store_credentials_refused")
    if profile is not None and not _PROFILE_RE.fullmatch(profile):
        raise Invalid(
            "profile names an AWS profile of the API server: 1-64 letters, digits, '.', "
            "'_' or '-'.",
            field="profile",
        )
    config = {
        "bucket": bucket,
        "prefix": clean_prefix,
        "endpoint_url": endpoint_url,
        "region": region,
        "profile": profile,
    }
    return {k: v for k, v in config.items() if v not in (None, "")}


def validate_keys(
    access_key_id: str | None, secret_access_key: str | None, session_token: str | None
) -> S3Keys | None:
    """The org's access key, checked (errors name the field, never echo the value)."""
    if access_key_id is None and secret_access_key is None and session_token is None:
        return None
    if not access_key_id or not _KEY_ID_RE.fullmatch(access_key_id):
        raise Invalid(
            "access_key_id is 3-128 printable characters without spaces, and is needed "
            "with a secret_access_key.",
            field="access_key_id",
        )
    for name, value, most in (
        ("secret_access_key", secret_access_key, 256),
        ("session_token", session_token, 4096),
    ):
        if value is None and name == "session_token":
            continue
        if not value or len(value) > most or any(not 32 < ord(c) < 127 for c in value):
            raise Invalid(f"{name} is 1-{most} printable characters without spaces.", field=name)
    assert secret_access_key is not None
    return S3Keys(access_key_id, secret_access_key, session_token)


def _check_prefix(prefix: str | None) -> str:
    clean = (prefix or "").strip("/")
    if clean and (
        len(clean) > 512
        or any(p in ("", ".", "..") for p in clean.split("/"))
        or any(ord(c) < 32 or ord(c) == 127 for c in clean)
    ):
        raise Invalid(
            "The prefix is up to 512 printable characters of '/'-separated names "
            "(no empty, '.' or '..' parts).",
            field="prefix",
        )
    return clean


def _check_endpoint(endpoint_url: str | None) -> None:
    # The same shape as an S3 endpoint (validate_s3 checks it).
    if endpoint_url is not None:
        validate_s3(bucket="shape-check", endpoint_url=endpoint_url)


def validate_azure(
    *,
    account: str | None,
    container: str | None,
    prefix: str | None = None,
    endpoint_url: str | None = None,
) -> dict[str, Any]:
    """An Azure Blob store's settings, checked (each error names its field)."""
    if not _ACCOUNT_RE.fullmatch(account or ""):
        raise Invalid("The storage account is 3-24 lowercase letters and digits.", field="account")
    if not _CONTAINER_RE.fullmatch(container or ""):
        raise Invalid(
            "The container is 3-63 lowercase letters, digits and single '-' between them.",
            field="container",
        )
    _check_endpoint(endpoint_url)
    config = {
        "account": account,
        "container": container,
        "prefix": _check_prefix(prefix),
        "endpoint_url": endpoint_url,
    }
    return {k: v for k, v in config.items() if v not in (None, "")}


def validate_gcs(
    *, bucket: str | None, prefix: str | None = None, endpoint_url: str | None = None
) -> dict[str, Any]:
    """A GCS store's settings, checked (each error names its field)."""
    if not _BUCKET_RE.fullmatch(bucket or "") or ".." in (bucket or ""):
        raise Invalid(
            "GCS bucket names are 3-63 lowercase letters, digits, '.' and '-'.",
            field="bucket",
        )
    _check_endpoint(endpoint_url)
    config = {"bucket": bucket, "prefix": _check_prefix(prefix), "endpoint_url": endpoint_url}
    return {k: v for k, v in config.items() if v not in (None, "")}


def validate_azure_keys(account_key: str | None, sas_token: str | None) -> AzureKeys | None:
    """The container's account key or SAS token (not both); errors never echo them."""
    if account_key is None and sas_token is None:
        return None
    if account_key is not None and sas_token is not None:
        raise Invalid("Give an account_key or a sas_token, not both.", field="sas_token")
    if account_key is not None:
        try:
            valid = len(account_key) <= 256 and len(base64.b64decode(account_key, validate=True))
        except ValueError:
            valid = False
        if not valid:
            raise Invalid("account_key is the account's base64 access key.", field="account_key")
    if sas_token is not None and (
        not 8 <= len(sas_token) <= 4096 or any(not 32 < ord(c) < 127 for c in sas_token)
    ):
        raise Invalid("sas_token is a SAS query string like 'sv=...&sig=...'.", field="sas_token")
    return AzureKeys(account_key=account_key, sas_token=sas_token)


def validate_gcs_keys(service_account_json: str | None) -> GcsKeys | None:
    """A service account key (the JSON file Google hands out); errors never echo it."""
    if service_account_json is None:
        return None
    rule = "service_account_json is the JSON key file of a service account."
    try:
        info = json.loads(service_account_json)
    except ValueError:
        raise Invalid(rule, field="service_account_json") from None
    if (
        len(service_account_json) > 16384
        or not isinstance(info, dict)
        or info.get("type") != "service_account"
        or not all(isinstance(info.get(k), str) for k in ("client_email", "private_key"))
    ):
        raise Invalid(rule, field="service_account_json")
    return GcsKeys(service_account_json)


def _public_keys(keys: StoreKeys | None) -> str | None:
    """What of the credentials may be shown: the S3 key id, a service account's e-mail,
    or only which kind of Azure credential is stored."""
    if isinstance(keys, S3Keys):
        return keys.access_key_id
    if isinstance(keys, GcsKeys):
        return str(json.loads(keys.service_account_json).get("client_email", "")) or None
    if isinstance(keys, AzureKeys):
        return "account key" if keys.account_key else "SAS token"
    return None


def describe(
    session: Session, settings: Settings, org_id: uuid.UUID, project_id: uuid.UUID | None = None
) -> dict[str, Any]:
    """What members see of where their organization's bytes go (no secrets: whether a
    key is stored, and its public id). With `project_id`: the project's own default
    store for outputs ("default": none, outputs go to the organization's store)."""
    store = active_store(session, org_id, project_id)
    if store is None:
        return {
            "kind": KIND_DEFAULT,
            "id": None,
            "config": {},
            "created_at": None,
            "access_key_id": None,
        }
    keys = _keys(settings, store.credentials)
    return {
        "kind": store.kind,
        "id": store.id,
        "config": dict(store.config),
        "created_at": store.created_at,
        "access_key_id": _public_keys(keys),
    }


def _validated(
    settings: Settings, kind: str, config: dict[str, Any], keys: StoreKeys | None
) -> dict[str, Any]:
    expected: type | None = {
        KIND_S3: S3Keys,
        KIND_SWIFT: S3Keys,
        KIND_AZURE: AzureKeys,
        KIND_GCS: GcsKeys,
    }.get(kind)
    if keys is not None and not isinstance(keys, expected or ()):
        raise Invalid(f"These credentials do not fit a '{kind}' store.", field="kind")
    if kind in S3_KINDS:
        if kind == KIND_SWIFT and not config.get("endpoint_url"):
            raise Invalid(
                "A Swift store needs the endpoint_url of the cloud's S3 API "
                "(e.g. https://swift.example.com).",
                field="endpoint_url",
            )
        config = validate_s3(**config, allow_profile=settings.store_allow_server_credentials)
        if config.get("endpoint_url"):
            EndpointPolicy(settings.store_allowlist()).check_url(config["endpoint_url"])
        return config
    if kind == KIND_AZURE:
        config = validate_azure(**config)
    elif kind == KIND_GCS:
        config = validate_gcs(**config)
    else:
        raise Invalid(f"kind is one of {', '.join(KINDS)}.", field="kind")
    if config.get("endpoint_url"):
        try:
            require_allowed_endpoint(settings, config["endpoint_url"])
        except EndpointRefused as exc:
            raise Invalid(exc.detail, field="endpoint_url", code=exc.code) from None
    return config


def _probe(settings: Settings, kind: str, config: dict[str, Any], keys: StoreKeys | None) -> None:
    # One attempt, short timeouts: an admin is waiting for the answer.
    tuning: dict[str, Any] = {"connect_timeout": 3.0, "max_attempts": 1}
    if kind in S3_KINDS:
        backend: Storage = _org_s3(settings, config, keys, **tuning)
    elif kind == KIND_AZURE:
        backend = _org_azure(settings, config, keys, **tuning)
    else:
        backend = _org_gcs(settings, config, keys, **tuning)
    field = "container" if kind == KIND_AZURE else "bucket"
    try:
        backend.check()
    except StorageError as exc:
        raise Invalid(f"The {field} is not usable: {exc.detail}", field=field) from None


def configure(
    ctx: OrgContext,
    session: Session,
    settings: Settings,
    *,
    kind: str,
    config: dict[str, Any],
    verify: bool,
    keys: StoreKeys | None = None,
    project_id: uuid.UUID | None = None,
) -> None:
    """Make `kind`/`config` (and the organization's credentials `keys`) the organization's
    store for new uploads, or with `project_id` the project's default store for its jobs'
    outputs ("default" there: none, back to the organization's); commits.

    The endpoint must pass the guard now (and will again on every connection). With
    `verify`, the bucket is written and read back first, exactly as uploads will reach
    it, so a typo or a missing permission is a 422 now rather than a failed upload
    later. The session is closed during that check: no lock is held on the network.
    """
    before = describe(session, settings, ctx.org.id, project_id)
    if kind == KIND_DEFAULT:
        if keys is not None:
            raise Invalid("The default store takes no credentials.", field="access_key_id")
    else:
        config = _validated(settings, kind, config, keys)
        if verify:
            session.close()  # nothing of the database is held while the store is asked
            _probe(settings, kind, config, keys)
    for old in session.scalars(
        select(DataStore).where(
            DataStore.org_id == ctx.org.id,
            DataStore.active.is_(True),
            DataStore.project_id.is_(None)
            if project_id is None
            else DataStore.project_id == project_id,
        )
    ):
        old.active = False
    if kind != KIND_DEFAULT:
        session.add(
            DataStore(
                org_id=ctx.org.id,
                project_id=project_id,
                kind=kind,
                config=config,
                credentials=_credentials(settings, keys),
                active=True,
                created_by=ctx.user.id,
            )
        )
    session.flush()
    after = describe(session, settings, ctx.org.id, project_id)
    audit.record(
        session,
        org_id=ctx.org.id,
        actor=ctx.user,
        action="datastore.configured",
        target_type="datastore",
        target_id=after["id"] or KIND_DEFAULT,
        before=_audited(before),
        after={**_audited(after), **({"project_id": str(project_id)} if project_id else {})},
    )
    session.commit()


def _credentials(settings: Settings, keys: StoreKeys | None) -> dict[str, Any] | None:
    if keys is None:
        return None
    return {SEALED: secret_box.encrypt(settings, json.dumps(_key_fields(keys)))}


def reseal_credentials(session: Session, settings: Settings) -> int:
    """Every stored store key sealed again with the first secrets key (rotation, with
    `orgs.secrets.rotate_all`); no commit. Returns how many."""
    count = 0
    for store in session.scalars(select(DataStore).where(DataStore.credentials.is_not(None))):
        keys = _keys(settings, store.credentials)
        store.credentials = _credentials(settings, keys)
        count += 1
    return count


def _audited(described: dict[str, Any]) -> dict[str, Any]:
    # The key's public id only: secrets never reach the audit log.
    return {
        "kind": described["kind"],
        **described["config"],
        "access_key_id": described["access_key_id"],
    }
