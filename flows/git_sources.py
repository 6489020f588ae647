"""Git repositories as a deployment's code: resolving a ref to the commit to pin.

`resolve(url, ref, credential)` asks the repository with `git ls-remote` (no clone) and
returns the full commit sha. Refs are matched like git does (`refs/<ref>`, then
`refs/tags/<ref>`, then `refs/heads/<ref>`; an annotated tag gives the commit it points
to). A sha is accepted when it is a ref tip's or a prefix of one (at least 7 digits); a
full 40-digit sha that is no tip is checked with a shallow fetch of exactly that commit
into a temp bare repository (GitHub, GitLab and git's protocol v2 allow it; from a server
that only serves ref tips, its branches' and tags' history must hold it). An abbreviated
sha that is no tip is refused: only the full sha can be asked for.

The server connects on a tenant's behalf, so the destination goes through the SSRF guard
(`orgs.netguard`): the host must resolve to public addresses unless an operator allowed
it (`CSHARE_GIT_HOST_ALLOWLIST`), plain http:// is for allowed hosts only, and git is
pinned to the checked address (curl's resolve list for http(s), ssh's HostName, the IP
literal for git://) with redirects off, so DNS that changes after the check reaches
nothing. Credentials reach git through `datasets.gitauth` (temp files, never argv).
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from datasets import gitauth
from flows.git_urls import deploy_key_secret, token_secret, validate_git_url
from flows.models import Project
from orgs import secrets
from orgs.config import Settings, get_settings
from orgs.models import Organization
from orgs.netguard import Address, forbidden
from orgs.netguard import resolve as resolve_host
from policies.errors import Invalid, NotFound

__all__ = [
    "GitCredential",
    "GitDestination",
    "check_destination",
    "credential_for",
    "deploy_key_secret",
    "match_ref",
    "parse_url",
    "resolve",
    "token_secret",
]

SHA_RE: Final = re.compile(r"^[0-9a-f]{7,40}$")
FULL_SHA_RE: Final = re.compile(r"^[0-9a-f]{40}$")
MAX_REF: Final = 255
_DEFAULT_PORTS: Final = {"https": 443, "http": 80, "ssh": 22, "git": 9418}
_SCHEMES: Final[tuple[Literal["https", "http", "ssh", "git"], ...]] = (
    "https",
    "http",
    "ssh",
    "git",
)
_SCP_RE: Final = re.compile(r"^(?P<user>[\w.-]+)@(?P<host>[A-Za-z0-9.-]+):(?P<path>[^\s]+)$")


@dataclass(frozen=True, slots=True)
class GitCredential:
    """A project's credential for its repository: an SSH deploy key or an HTTPS token.

    The secret text never shows in `repr` (logs, tracebacks)."""

    kind: Literal["ssh", "token"]
    secret: str = field(repr=False)
    user: str = gitauth.DEFAULT_TOKEN_USER

    @classmethod
    def ssh(cls, private_key: str) -> GitCredential:
        return cls("ssh", private_key)

    @classmethod
    def token(cls, token: str, user: str | None = None) -> GitCredential:
        return cls("token", token, user or gitauth.DEFAULT_TOKEN_USER)

    def material(self) -> dict[str, str]:
        """What `datasets.gitauth` and the machine (`agents.git_code`) take."""
        if self.kind == "ssh":
            return {"kind": "ssh", "private_key": self.secret}
        return {"kind": "token", "user": self.user, "token": self.secret}


# ---------------------------------------------------------------- destinations


@dataclass(frozen=True, slots=True)
class GitUrl:
    url: str
    scheme: Literal["https", "http", "ssh", "git"]
    host: str
    port: int


def parse_url(url: str, *, allow_http: bool = False) -> GitUrl:
    """The URL's scheme, host and port; `Invalid(field="git")` for anything else.

    https://, git://, ssh:// and scp-like `user@host:path` (flows.projects'
    rule); http:// only with `allow_http` (a host the operator allowed)."""
    url = url.strip()
    if url.startswith("http://") and not allow_http:
        raise Invalid(
            "Plain http:// Git URLs are only for hosts an operator allowed "
            "(CSHARE_GIT_HOST_ALLOWLIST); use https://.",
            field="git",
            code="invalid_git_url",
        )
    try:
        validate_git_url(
            "https://" + url.removeprefix("http://") if url.startswith("http://") else url
        )
    except Invalid as exc:
        raise Invalid(exc.detail, field="git", code="invalid_git_url") from None
    scp = _SCP_RE.fullmatch(url)
    parts = urlsplit(url)
    if scp is not None and "://" not in url:
        user, host = scp["user"], scp["host"]
    else:
        user, host = parts.username or "", parts.hostname or ""
    # ssh would take `-oProxyCommand=...` for an option (git refuses it too).
    if user.startswith("-") or host.startswith("-"):
        raise Invalid(
            "A Git URL's user and host may not start with '-'.",
            field="git",
            code="invalid_git_url",
        )
    if scp is not None and "://" not in url:
        return GitUrl(url, "ssh", host, 22)
    for scheme in _SCHEMES:
        if parts.scheme == scheme:
            return GitUrl(url, scheme, host, parts.port or _DEFAULT_PORTS[scheme])
    raise Invalid(f"Unsupported Git URL scheme '{parts.scheme}'.", field="git")


@dataclass(frozen=True, slots=True)
class GitDestination:
    """A URL whose host was checked, and how git is pinned to the checked address."""

    url: GitUrl
    address: Address
    fetch_url: str  # what git is given (git://: the address literal)
    config: dict[str, str]  # GIT_CONFIG_* settings (curl's resolve list, no redirects)
    ssh_host_name: str | None


def _literal(address: Address) -> str:
    return f"[{address}]" if isinstance(address, ipaddress.IPv6Address) else str(address)


def check_destination(url: str, *, settings: Settings | None = None) -> GitDestination:
    """The SSRF guard for `url`: `Invalid(field="git")` naming the host when the server
    may not connect there."""
    settings = settings or get_settings()
    allowlist = settings.git_allowlist()
    hint = " An operator can allow it with CSHARE_GIT_HOST_ALLOWLIST."
    probe = parse_url(url, allow_http=True)
    addresses = resolve_host(probe.host, probe.port)
    if not addresses:
        raise Invalid(
            f"Cannot reach {url}: the host '{probe.host}' cannot be resolved.",
            field="git",
            code="git_unreachable",
        )
    allowed = allowlist.allows_host(probe.host) or all(
        allowlist.allows_address(a) for a in addresses
    )
    parsed = parse_url(url, allow_http=allowed)
    if not allowed:
        bad = [a for a in addresses if forbidden(a)]
        if bad:
            raise Invalid(
                f"The Git host '{parsed.host}' resolves to {bad[0]}, a loopback, private, "
                "link-local, metadata or otherwise internal address; the server only "
                "fetches from public addresses." + hint,
                field="git",
                code="git_host_refused",
            )
    address = addresses[0]
    config: dict[str, str] = {"http.followRedirects": "false"}
    fetch_url = parsed.url
    ssh_host_name: str | None = None
    if parsed.scheme in ("https", "http"):
        config["http.curloptResolve"] = f"{parsed.host}:{parsed.port}:{_literal(address)}"
    elif parsed.scheme == "ssh":
        ssh_host_name = str(address)
    else:  # git://: no resolve override in git, so connect to the literal address
        parts = urlsplit(parsed.url)
        fetch_url = parts._replace(netloc=f"{_literal(address)}:{parsed.port}").geturl()
    return GitDestination(parsed, address, fetch_url, config, ssh_host_name)


# ------------------------------------------------------------------ resolving


def _check_ref(ref: str) -> str:
    ref = ref.strip()
    if (
        not ref
        or len(ref) > MAX_REF
        or ref.startswith("-")
        or any(c.isspace() or ord(c) < 32 or c in "~^:?*[\\" for c in ref)
        or ".." in ref
    ):
        raise Invalid(
            "A ref is a branch, a tag or a commit sha (like main, v1.2 or 3f2a9c1).",
            field="ref",
            code="invalid_ref",
        )
    return ref


def parse_ls_remote(text: str) -> dict[str, str]:
    """`git ls-remote` output as {ref name: sha}; `^{}` lines (peeled tags) kept as is."""
    refs: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ref: "):  # --symref lines
            continue
        sha, _, name = line.partition("\t")
        if FULL_SHA_RE.fullmatch(sha) and name:
            refs[name] = sha
    return refs


def match_ref(refs: Mapping[str, str], ref: str) -> str | None:
    """The commit `ref` names among the advertised refs (git's order), or None."""
    candidates = (
        [ref]
        if ref.startswith("refs/") or ref == "HEAD"
        else [f"refs/{ref}", f"refs/tags/{ref}", f"refs/heads/{ref}", f"refs/remotes/{ref}"]
    )
    for name in candidates:
        if name in refs:
            return refs.get(f"{name}^{{}}", refs[name])  # an annotated tag: its commit
    if SHA_RE.fullmatch(ref):
        tips = {sha for sha in refs.values() if sha.startswith(ref)}
        if len(tips) == 1:
            return tips.pop()
    return None


def _branches(refs: Mapping[str, str]) -> list[str]:
    return sorted(n.removeprefix("refs/heads/") for n in refs if n.startswith("refs/heads/"))


_AUTH_SIGNS: Final = (
    "authentication failed",
    "could not read username",
    "could not read password",
    "permission denied",
    "terminal prompts disabled",
    "http 401",
    "http 403",
    "the requested url returned error: 401",
    "the requested url returned error: 403",
    "invalid username or password",
)
_MISSING_SIGNS: Final = (
    "does not appear to be a git repository",
    "repository not found",
    "not found",
    "no such repository",
    "access denied",
    "returned error: 404",
)


# Lines git and ssh print around the real reason (which is kept).
_NOISE: Final = (
    "Warning: Permanently added",
    "hint:",
    "fatal: Could not read from remote repository",
    "Please make sure you have the correct access rights",
    "and the repository exists.",
    "error: unable to read askpass response",
)


def _git_message(stderr: str, material: Mapping[str, str] | None) -> str:
    lines = [
        line.strip().removeprefix("fatal: ").removeprefix("error: ")
        for line in gitauth.scrub(stderr, material).splitlines()
        if line.strip() and not line.strip().startswith(_NOISE)
    ]
    text = "; ".join(lines[-3:]) or "git gave no reason"
    return text[:400]


def _failure(url: str, stderr: str, credential: GitCredential | None) -> Invalid:
    material = credential.material() if credential else None
    message = _git_message(stderr, material)
    low = stderr.lower()
    if any(sign in low for sign in _AUTH_SIGNS):
        if credential is None:
            advice = (
                "for a private repository add a deploy key (`cshare project deploy-key "
                "generate PROJECT`) or a token (`cshare project git-token set PROJECT "
                "--token-stdin`)"
            )
        else:
            what = "deploy key" if credential.kind == "ssh" else "token"
            advice = f"check that the project's {what} has read access to it"
        return Invalid(
            f"{url} refused access ({message}); {advice}.",
            field="git",
            code="git_auth_failed",
        )
    if any(sign in low for sign in _MISSING_SIGNS):
        return Invalid(
            f"No Git repository at {url} ({message}).", field="git", code="git_not_found"
        )
    return Invalid(f"Cannot reach {url}: {message}", field="git", code="git_unreachable")


def _run(
    args: list[str], env: dict[str, str], timeout_s: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str] | None:
    """git with `env`; None when it ran out of time."""
    try:
        return subprocess.run(
            ["git", *args],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return None


def resolve(
    url: str,
    ref: str,
    credential: GitCredential | None = None,
    *,
    timeout_s: float = 20,
    settings: Settings | None = None,
) -> str:
    """The full sha of the commit `ref` names in the repository at `url`.

    `Invalid` with field "git" (URL refused, unreachable, no repository, access refused)
    or "ref" (no such branch, tag or commit; the message lists a few branches)."""
    ref = _check_ref(ref)
    dest = check_destination(url, settings=settings)
    material = credential.material() if credential else None
    with gitauth.git_env(
        material, ssh_host_name=dest.ssh_host_name, extra_config=dest.config
    ) as env:

        def ls_remote(options: list[str], patterns: list[str] = []) -> dict[str, str]:  # noqa: B006
            listed = _run(["ls-remote", *options, "--", dest.fetch_url, *patterns], env, timeout_s)
            if listed is None:
                raise Invalid(
                    f"Cannot reach {url}: no answer within {timeout_s:g} s.",
                    field="git",
                    code="git_unreachable",
                )
            if listed.returncode != 0:
                raise _failure(url, listed.stderr, credential)
            return parse_ls_remote(listed.stdout)

        if SHA_RE.fullmatch(ref):  # a sha (or a hex-looking name): every branch and tag tip
            refs = ls_remote(["--heads", "--tags"])
        else:
            # Only refs that may be `ref` (protocol v2 asks the server for just those):
            # GitHub advertises every pull request's refs too.
            names = [f"refs/{ref}", f"refs/tags/{ref}", f"refs/heads/{ref}", ref]
            # `^{}`: what an annotated tag points to (not matched by its name alone).
            refs = ls_remote([], names + [f"{name}^{{}}" for name in names])
        found = match_ref(refs, ref)
        if found is not None:
            return found
        if FULL_SHA_RE.fullmatch(ref) and _commit_exists(dest.fetch_url, ref, env, timeout_s):
            return ref
        if not SHA_RE.fullmatch(ref):
            refs = ls_remote(["--heads"])  # for the message
    branches = _branches(refs)
    shown = ", ".join(branches[:10]) + (", ..." if len(branches) > 10 else "")
    if SHA_RE.fullmatch(ref) and not FULL_SHA_RE.fullmatch(ref):
        hint = " An abbreviated sha must be a branch or tag tip; give the full 40 digits."
    else:
        hint = ""
    raise Invalid(
        f"No branch, tag or commit '{ref}' in {url}"
        + (f" (branches: {shown})." if branches else " (it has no branches).")
        + hint,
        field="ref",
        code="git_ref_not_found",
    )


def _commit_exists(fetch_url: str, sha: str, env: dict[str, str], timeout_s: float) -> bool:
    """Whether the server hands out commit `sha`: a shallow fetch of just it, or, from a
    server that only serves ref tips (protocol v0 without allowAnySHA1InWant), the
    history of its branches and tags without file contents (where filters are allowed)
    must hold it. What a machine does too (agents.git_code)."""
    with tempfile.TemporaryDirectory(prefix="cshare-git-probe-") as tmp:
        init = _run(["init", "-q", "--bare", tmp], env, timeout_s)
        if init is None or init.returncode != 0:
            return False
        fetched = _run(
            ["fetch", "-q", "--depth", "1", "--no-tags", "--", fetch_url, sha],
            env,
            timeout_s,
            cwd=Path(tmp),
        )
        if fetched is not None and fetched.returncode == 0:
            return True
        every = _run(
            [
                "fetch",
                "-q",
                "--filter=blob:none",
                "--no-tags",
                "--",
                fetch_url,
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ],
            env,
            timeout_s,
            cwd=Path(tmp),
        )
        if every is None or every.returncode != 0:
            return False
        found = _run(["cat-file", "-e", f"{sha}^{{commit}}"], env, timeout_s, cwd=Path(tmp))
        return found is not None and found.returncode == 0


# ------------------------------------------------------------------ credentials


def _read(session: Session, org: Organization, name: str, settings: Settings) -> str | None:
    try:
        return secrets.reveal(session, org.id, name, settings=settings)
    except NotFound:
        return None


def credential_for(
    session: Session,
    org: Organization,
    project: Project,
    *,
    url: str | None = None,
    settings: Settings | None = None,
) -> GitCredential | None:
    """The project's Git credential for `url`: the deploy key for ssh URLs, the token
    for http(s) ones, nothing for git://. Without `url`: the key, else the token."""
    settings = settings or get_settings()
    scheme = parse_url(url, allow_http=True).scheme if url else None
    if scheme == "git" or project.org_id != org.id:
        return None
    if scheme in (None, "ssh"):
        key = _read(session, org, deploy_key_secret(project), settings)
        if key is not None:
            return GitCredential.ssh(key)
        if scheme == "ssh":
            return None
    stored = _read(session, org, token_secret(project), settings)
    if stored is None:
        return None
    data = json.loads(stored)
    return GitCredential.token(str(data["token"]), str(data.get("user") or ""))


# ------------------------------------------------------------ deployments and jobs


def requested(code: Mapping[str, object]) -> tuple[str, str, bool]:
    """(repository, ref, track) of a deployment's `code: {kind: git, ...}`, checked;
    `Invalid` naming the field otherwise."""
    repository = str(code.get("repository") or "").strip()
    if not repository:
        raise Invalid("A Git deployment needs its repository URL.", field="git.repository")
    parse_url(repository, allow_http=True)  # the scheme; the SSRF guard runs at resolve
    ref = str(code.get("ref") or "").strip()
    if not ref:
        raise Invalid("A Git deployment needs a ref (branch, tag or commit).", field="git.ref")
    return repository, _check_ref(ref), bool(code.get("track"))


def pinned(repository: str, ref: str, commit: str, track: bool) -> dict[str, object]:
    """A deployment's (and its jobs') `code` for a Git source."""
    return {"kind": "git", "repository": repository, "ref": ref, "commit": commit, "track": track}


def is_git(code: Mapping[str, object] | None) -> bool:
    return bool(code) and code is not None and code.get("kind") == "git"


def machine_source(
    session: Session,
    org: Organization,
    project: Project | None,
    code: Mapping[str, object],
    *,
    for_machine: bool,
    settings: Settings | None = None,
) -> dict[str, object]:
    """What `GET /orgs/{org}/jobs/{id}/code` answers for a Git job: the repository, the
    commit, and the project's credential for it only when the job's own machine asks
    (`for_machine`: its job token); a member reading it gets `credential: null`."""
    repository = str(code.get("repository") or "")
    credential = None
    if for_machine and project is not None:
        found = credential_for(session, org, project, url=repository, settings=settings)
        credential = found.material() if found is not None else None
    return {
        "kind": "git",
        "repository": repository,
        "commit": str(code.get("commit") or ""),
        "credential": credential,
    }
