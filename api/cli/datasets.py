"""`cshare dataset ...`: create, upload, list, show, download, access, delete, store.

Transfers stream from and to disk in 1 MiB chunks (never a whole file in memory) with a
progress bar showing throughput on stderr. Uploads announce their checksum
(`X-Content-SHA256`), so the server refuses bytes that changed on the way; downloads are
hashed as they are written and only renamed into place when the checksum matches.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from api.cli import config, output
from api.cli.client import (
    API_PREFIX,
    USER_AGENT,
    Client,
    _api_error,
    connect,
    read_org,
    require_org,
    seg,
)
from api.cli.options import JsonOpt, OrgOpt, YesOpt
from api.cli.output import CliError, ConnectionProblem, UsageProblem
from datasets import wire

app = typer.Typer(help="Datasets: versioned files and directories.", no_args_is_help=True)
store_app = typer.Typer(help="Where the organization's dataset bytes are stored.")
app.add_typer(store_app, name="store")

# Long transfers: connect quickly, but no limit between chunks beyond a generous read wait.
TRANSFER_TIMEOUT = httpx.Timeout(300.0, connect=10.0)


def human_size(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )


def _counted(chunks: Iterable[bytes], progress: Progress, task: Any) -> Iterator[bytes]:
    for chunk in chunks:
        progress.update(task, advance=len(chunk))
        yield chunk


def _hash_with_progress(files: list[wire.LocalFile], label: str) -> list[wire.ManifestEntry]:
    total = sum(f.size for f in files)
    entries: list[wire.ManifestEntry] = []
    with _progress() as progress:
        task = progress.add_task(label, total=total)
        for f in files:
            digest = hashlib.sha256()
            for chunk in wire.file_chunks(f.source):
                digest.update(chunk)
                progress.update(task, advance=len(chunk))
            entries.append(wire.ManifestEntry(f.path, digest.hexdigest(), f.size))
    return entries


@contextlib.contextmanager
def _transfer_client(client: Client) -> Iterator[httpx.Client]:
    """A client like `client` but with transfer timeouts (uploads may take minutes)."""
    headers = {"User-Agent": USER_AGENT}
    if client.token:
        headers["Authorization"] = f"Bearer {client.token}"
    with httpx.Client(
        base_url=client.api_url + API_PREFIX, timeout=TRANSFER_TIMEOUT, headers=headers
    ) as http:
        yield http


def parse_ref(ref: str) -> tuple[str, str]:
    """`NAME` or `NAME@VERSION` -> (name, version path segment: a number or 'latest')."""
    name, _, version = ref.partition("@")
    if not name:
        raise UsageProblem("Give a dataset name, like 'images' or 'images@3'.")
    return name, version or "latest"


# --------------------------------------------------------------------------- commands


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Letters, digits, '.', '_', '-'.")],
    description: Annotated[str | None, typer.Option("--description", "-d")] = None,
    restricted: Annotated[
        bool, typer.Option("--restricted", help="Only listed members (and admins) may read.")
    ] = False,
    member: Annotated[
        list[str] | None, typer.Option("--member", "-m", help="A member who may read (repeat).")
    ] = None,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Create an empty dataset."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    body: dict[str, Any] = {"name": name, "visibility": "restricted" if restricted else "org"}
    if description is not None:
        body["description"] = description
    if member:
        body["members"] = member
    with connect(cfg) as client:
        created = client.post(f"/orgs/{seg(slug)}/datasets", json=body)
    if json_:
        output.print_json(created)
        return
    output.say(f"Created dataset '{created['name']}' ({created['visibility']}).")


def _ensure_dataset(client: Client, slug: str, name: str) -> None:
    try:
        client.post(f"/orgs/{seg(slug)}/datasets", json={"name": name})
    except output.ApiError as exc:
        if exc.status != 409:
            raise


def _post_stream(
    client: Client, path: str, content: Iterable[bytes], headers: dict[str, str], params: Any
) -> dict[str, Any]:
    try:
        with _transfer_client(client) as http:
            response = http.post(path, content=content, headers=headers, params=params)
    except httpx.TransportError as exc:
        raise ConnectionProblem(
            f"The upload to {client.api_url} failed ({exc or type(exc).__name__}); "
            "nothing was stored. Run the command again."
        ) from None
    if not response.is_success:
        raise _api_error(response)
    result: dict[str, Any] = response.json()
    return result


@app.command("upload")
def upload(
    name: Annotated[str, typer.Argument(help="The dataset.")],
    path: Annotated[Path, typer.Argument(help="A file, or a directory (sent as a tar).")],
    description: Annotated[str | None, typer.Option("--description", "-d")] = None,
    create: Annotated[
        bool, typer.Option("--create", help="Create the dataset if it does not exist.")
    ] = False,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Upload a new version of a dataset (streamed, checksum-verified)."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    if not path.exists():
        raise UsageProblem(f"{path} does not exist.")
    params: dict[str, str] = {}
    if description:
        params["description"] = description
    with connect(cfg) as client:
        if create:
            _ensure_dataset(client, slug, name)
        if path.is_dir():
            try:
                files = wire.walk_directory(path)
            except ValueError as exc:
                raise CliError(str(exc)) from None
            entries = _hash_with_progress(files, "checksum")
            sha = wire.manifest_sha256(entries)
            length = wire.tar_length([(f.path, f.size) for f in files])
            params["filename"] = path.resolve().name or name
            headers = {"Content-Type": wire.TAR_MEDIA_TYPE}
            chunks: Iterable[bytes] = wire.iter_tar_from_files(files)
        else:
            size = path.stat().st_size
            sha = _hash_with_progress([wire.LocalFile(path.name, path, size)], "checksum")[0].sha256
            length = size
            params["filename"] = path.name
            headers = {"Content-Type": wire.FILE_MEDIA_TYPE}
            chunks = wire.file_chunks(path)
        headers[wire.SHA256_HEADER] = sha
        headers["Content-Length"] = str(length)
        with _progress() as progress:
            task = progress.add_task(f"upload {name}", total=length)
            version = _post_stream(
                client,
                f"/orgs/{seg(slug)}/datasets/{seg(name)}/versions",
                _counted(chunks, progress, task),
                headers,
                params,
            )
    if json_:
        output.print_json(version)
        return
    output.say(
        f"{name}@{version['version']}: {version['kind']} {human_size(version['size'])}, "
        f"sha256 {version['sha256']}"
    )


@app.command("list")
def list_(org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """The datasets you may read."""
    slug, page = read_org(org, "datasets", every_page=True)
    if output.printed_as_json(page, json_):
        return
    items = page["items"]
    output.table(
        ["NAME", "LATEST", "VERSIONS", "SIZE", "VISIBILITY", "CREATED BY", "UPDATED"],
        (
            [
                d["name"],
                (d.get("latest_version") or {}).get("version"),
                d.get("version_count"),
                human_size(d.get("size")),
                d.get("visibility"),
                (d.get("created_by") or {}).get("name"),
                output.when((d.get("latest_version") or {}).get("created_at") or d["created_at"]),
            ]
            for d in items
        ),
        title=f"Datasets of {slug}",
        empty="No datasets yet: `cshare dataset create NAME`.",
    )


@app.command("show")
def show(name: str, org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """A dataset and all its versions: size, checksum, who, when, which jobs."""
    _slug, d = read_org(org, "datasets", name)
    if output.printed_as_json(d, json_):
        return
    output.say(f"{d['name']} ({d['visibility']})")
    if d.get("description"):
        output.say(str(d["description"]))
    output.say(
        f"created by {(d.get('created_by') or {}).get('name')} on {output.when(d['created_at'])}"
    )
    if d["visibility"] == "restricted":
        output.say("readers: " + (", ".join(m["name"] for m in d.get("members", [])) or "-"))
    output.table(
        ["VERSION", "KIND", "SIZE", "SHA256", "BY", "CREATED", "PRODUCED BY", "USED BY", "STATE"],
        (
            [
                v["version"],
                v["kind"] if v["kind"] == "file" else f"dir ({v['file_count']} files)",
                human_size(v["size"]),
                v["sha256"][:16],
                (v.get("created_by") or {}).get("name"),
                output.when(v["created_at"]),
                str(v["produced_by_job_id"])[:8] if v.get("produced_by_job_id") else "",
                ", ".join(str(j)[:8] for j in v.get("used_by_job_ids", [])[:3])
                + (f" (+{v['used_by_count'] - 3})" if v.get("used_by_count", 0) > 3 else ""),
                "deleted" if v.get("tombstoned_at") else "",
            ]
            for v in d.get("versions", [])
        ),
        empty="No versions yet: `cshare dataset upload NAME PATH`.",
    )


def _stream_download(
    client: Client, path: str, progress: Progress, label: str
) -> contextlib.AbstractContextManager[tuple[httpx.Response, Iterator[bytes]]]:
    @contextlib.contextmanager
    def run() -> Iterator[tuple[httpx.Response, Iterator[bytes]]]:
        with _transfer_client(client) as http, http.stream("GET", path) as response:
            if not response.is_success:
                response.read()
                raise _api_error(response)
            total = int(response.headers.get("content-length") or 0) or None
            task = progress.add_task(label, total=total)
            yield response, _counted(response.iter_raw(wire.CHUNK), progress, task)

    return run()


@app.command("download")
def download(
    ref: Annotated[str, typer.Argument(metavar="NAME[@VERSION]", help="Default: latest.")],
    output_path: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="File or directory to write (default: its name)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output.")] = False,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Download a version; its checksum is verified before it is put in place."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    name, version = parse_ref(ref)
    path = f"/orgs/{seg(slug)}/datasets/{seg(name)}/versions/{seg(version)}/download"
    with connect(cfg) as client, _progress() as progress:
        try:
            with _stream_download(client, path, progress, f"download {name}") as (response, body):
                kind = response.headers.get("x-cshare-kind", "file")
                expected = response.headers.get(wire.SHA256_HEADER.lower(), "")
                number = response.headers.get("x-cshare-version", version)
                default = _filename(response.headers.get("content-disposition", ""), name, kind)
                target = output_path or Path(default)
                if target.exists() and not force:
                    raise UsageProblem(f"{target} exists; pass --force to replace it.")
                partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
                try:
                    actual = _receive(kind, body, partial)
                    if actual != expected:
                        raise CliError(
                            f"Checksum mismatch: got {actual}, the server announced {expected}; "
                            "nothing was saved."
                        )
                    _replace(partial, target)
                finally:
                    _remove(partial)
        except httpx.TransportError as exc:
            raise CliError(
                f"The download was cut short ({exc or type(exc).__name__}): the connection "
                "dropped, or the server found the stored bytes damaged (it aborts rather than "
                "send bad data). Nothing was saved."
            ) from None
    if json_:
        output.print_json(
            {"dataset": name, "version": int(number), "sha256": expected, "path": str(target)}
        )
        return
    output.say(f"{name}@{number} -> {target} (sha256 {expected} verified)")


def _filename(disposition: str, name: str, kind: str) -> str:
    marker = 'filename="'
    if marker in disposition:
        got = disposition.split(marker, 1)[1].split('"', 1)[0]
        clean = wire.safe_path(got)
        if clean and "/" not in clean:
            return clean.removesuffix(".tar") if kind == "directory" else clean
    return name


def _receive(kind: str, body: Iterator[bytes], partial: Path) -> str:
    """Write the body to `partial` (a file, or a directory from the tar); the checksum."""
    try:
        return wire.receive_version(kind, body, partial)
    except OSError as exc:
        raise CliError(f"Could not write {partial.parent}: {exc.strerror or exc}.") from None


def _replace(partial: Path, target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    partial.rename(target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@app.command("access")
def access(
    name: str,
    restricted: Annotated[
        bool | None,
        typer.Option("--restricted/--org-wide", help="Only listed members, or every member."),
    ] = None,
    member: Annotated[
        list[str] | None,
        typer.Option("--member", "-m", help="A reader (repeat); replaces the list."),
    ] = None,
    clear: Annotated[bool, typer.Option("--clear-members", help="Empty the list.")] = False,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Who may read a dataset (its creator and admins)."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    body: dict[str, Any] = {}
    if restricted is not None:
        body["visibility"] = "restricted" if restricted else "org"
    if member or clear:
        body["members"] = [] if clear else list(member or [])
    if not body:
        raise UsageProblem("Nothing to change: pass --restricted/--org-wide and/or --member.")
    with connect(cfg) as client:
        result = client.put(f"/orgs/{seg(slug)}/datasets/{seg(name)}/access", json=body)
    if json_:
        output.print_json(result)
        return
    readers = ", ".join(m["name"] for m in result["members"]) or "-"
    output.say(f"{result['name']}: {result['visibility']}; listed readers: {readers}")


@app.command("delete")
def delete(name: str, yes: YesOpt = False, org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """Delete a dataset; versions used by jobs stay as records (their bytes go)."""
    cfg = config.effective()
    slug = require_org(cfg, org)
    if not yes:
        typer.confirm(f"Delete dataset '{name}' and its stored bytes?", abort=True)
    with connect(cfg) as client:
        result = client.delete(f"/orgs/{seg(slug)}/datasets/{seg(name)}")
    if json_:
        output.print_json(result)
        return
    output.say(
        f"Deleted '{name}': {result['deleted_versions']} version(s) removed, "
        f"{result['tombstoned_versions']} kept as records for lineage."
    )


# --------------------------------------------------------------------------- store


def _store_lines(store: dict[str, Any]) -> None:
    if store["kind"] == "default":
        output.say("The installation's default store.")
        return
    cfg = store.get("config") or {}
    where = {
        "s3": f"S3 bucket {cfg.get('bucket')}",
        "swift": f"Swift container {cfg.get('bucket')} (S3 API)",
        "gcs": f"GCS bucket {cfg.get('bucket')}",
        "azure": f"Azure container {cfg.get('container')} of account {cfg.get('account')}",
    }.get(store["kind"], store["kind"])
    output.say(where + (f", prefix {cfg['prefix']}" if cfg.get("prefix") else ""))
    for key in ("endpoint_url", "region", "profile"):
        if cfg.get(key):
            output.say(f"{key}: {cfg[key]}")
    if store.get("access_key_id"):
        output.say(f"credentials: {store['access_key_id']} (secret stored, never shown)")


# The S3 API's secret key and TLS check, shared by the s3 and swift store commands.
SecretKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--secret-access-key",
        envvar="CSHARE_STORE_SECRET_ACCESS_KEY",
        help="Its secret (asked for when not given; never shown again).",
    ),
]
VerifyOpt = Annotated[bool, typer.Option("--verify/--no-verify")]
ProjectOpt = Annotated[
    str | None,
    typer.Option(
        "--project",
        help="Set this project's default store for its jobs' outputs instead of the "
        "organization's store.",
    ),
]


def _store_path(slug: str, project: str | None) -> str:
    if project:
        return f"/orgs/{seg(slug)}/projects/{seg(project)}/datastore"
    return f"/orgs/{seg(slug)}/datastore"


def _put_store(
    org: str | None, json_: bool, body: dict[str, Any], project: str | None = None
) -> None:
    cfg = config.effective()
    slug = require_org(cfg, org)
    with connect(cfg) as client:
        store = client.put(
            _store_path(slug, project), json={k: v for k, v in body.items() if v is not None}
        )
    if json_:
        output.print_json(store)
        return
    _store_lines(store)


@store_app.command("show")
def store_show(project: ProjectOpt = None, org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """Where new uploads go (with --project: where that project's job outputs go)."""
    parts = ("projects", project, "datastore") if project else ("datastore",)
    _slug, store = read_org(org, *parts)
    if output.printed_as_json(store, json_):
        return
    _store_lines(store)


@store_app.command("s3")
def store_s3(
    bucket: Annotated[str, typer.Option("--bucket", help="The bucket.")],
    prefix: Annotated[str | None, typer.Option("--prefix")] = None,
    endpoint_url: Annotated[
        str | None, typer.Option("--endpoint-url", help="For S3-compatible stores.")
    ] = None,
    region: Annotated[str | None, typer.Option("--region")] = None,
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile",
            help="An AWS profile of the API server (only if its operator allows org "
            "stores the server's credentials).",
        ),
    ] = None,
    access_key_id: Annotated[
        str | None, typer.Option("--access-key-id", help="The bucket's access key.")
    ] = None,
    secret_access_key: SecretKeyOpt = None,
    verify: VerifyOpt = True,
    project: ProjectOpt = None,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Store new uploads in an S3 bucket (admins), signed with the bucket's own access
    key (or unsigned, for a bucket open to anyone)."""
    if access_key_id and not secret_access_key:
        secret_access_key = typer.prompt("Secret access key", hide_input=True)
    body = {
        "kind": "s3",
        "bucket": bucket,
        "prefix": prefix,
        "endpoint_url": endpoint_url,
        "region": region,
        "profile": profile,
        "access_key_id": access_key_id,
        "secret_access_key": secret_access_key,
        "verify": verify,
    }
    _put_store(org, json_, body, project)


@store_app.command("swift")
def store_swift(
    container: Annotated[str, typer.Option("--container", help="The Swift container.")],
    endpoint_url: Annotated[
        str,
        typer.Option("--endpoint-url", help="The cloud's S3 API, e.g. https://swift.example.com."),
    ],
    prefix: Annotated[str | None, typer.Option("--prefix")] = None,
    region: Annotated[str | None, typer.Option("--region")] = None,
    access_key_id: Annotated[
        str | None,
        typer.Option("--access-key-id", help="EC2 credentials (openstack ec2 credentials create)."),
    ] = None,
    secret_access_key: SecretKeyOpt = None,
    verify: VerifyOpt = True,
    project: ProjectOpt = None,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Store new uploads in an OpenStack Swift container through its S3 API (admins)."""
    if access_key_id and not secret_access_key:
        secret_access_key = typer.prompt("Secret access key", hide_input=True)
    _put_store(
        org,
        json_,
        {
            "kind": "swift",
            "bucket": container,
            "prefix": prefix,
            "endpoint_url": endpoint_url,
            "region": region,
            "access_key_id": access_key_id,
            "secret_access_key": secret_access_key,
            "verify": verify,
        },
        project,
    )


@store_app.command("azure")
def store_azure(
    account: Annotated[str, typer.Option("--account", help="The storage account.")],
    container: Annotated[str, typer.Option("--container", help="The blob container.")],
    prefix: Annotated[str | None, typer.Option("--prefix")] = None,
    endpoint_url: Annotated[
        str | None,
        typer.Option("--endpoint-url", help="Only where the operator allows it (emulators)."),
    ] = None,
    sas: Annotated[
        bool, typer.Option("--sas", help="Give a SAS token instead of the account key.")
    ] = False,
    secret: Annotated[
        str | None,
        typer.Option(
            "--secret",
            envvar="CSHARE_STORE_SECRET",
            help="The account key (or SAS token with --sas); asked for when not given.",
        ),
    ] = None,
    anonymous: Annotated[
        bool, typer.Option("--anonymous", help="No credentials (a public container).")
    ] = False,
    verify: Annotated[bool, typer.Option("--verify/--no-verify")] = True,
    project: ProjectOpt = None,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Store new uploads in an Azure Blob Storage container (admins)."""
    if not anonymous and not secret:
        secret = typer.prompt("SAS token" if sas else "Account key", hide_input=True)
    _put_store(
        org,
        json_,
        {
            "kind": "azure",
            "account": account,
            "container": container,
            "prefix": prefix,
            "endpoint_url": endpoint_url,
            "sas_token": secret if sas else None,
            "account_key": None if sas else secret,
            "verify": verify,
        },
        project,
    )


@store_app.command("gcs")
def store_gcs(
    bucket: Annotated[str, typer.Option("--bucket", help="The bucket.")],
    key_file: Annotated[
        Path | None,
        typer.Option("--key-file", help="A service account's JSON key (stored sealed)."),
    ] = None,
    prefix: Annotated[str | None, typer.Option("--prefix")] = None,
    endpoint_url: Annotated[
        str | None,
        typer.Option("--endpoint-url", help="Only where the operator allows it (emulators)."),
    ] = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify")] = True,
    project: ProjectOpt = None,
    org: OrgOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Store new uploads in a Google Cloud Storage bucket (admins); without --key-file
    requests are anonymous (a public bucket)."""
    _put_store(
        org,
        json_,
        {
            "kind": "gcs",
            "bucket": bucket,
            "prefix": prefix,
            "endpoint_url": endpoint_url,
            "service_account_json": key_file.read_text() if key_file else None,
            "verify": verify,
        },
        project,
    )


@store_app.command("default")
def store_default(project: ProjectOpt = None, org: OrgOpt = None, json_: JsonOpt = False) -> None:
    """Store new uploads in the installation's default store again (admins); with
    --project: the project names no store of its own any more."""
    _put_store(org, json_, {"kind": "default"}, project)
