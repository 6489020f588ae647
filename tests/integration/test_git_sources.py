"""Git sources against real servers: `git daemon` (public), `git http-backend` behind basic
auth (private, token) and `sshd` (private, deploy key). The server side resolves refs
(`flows.git_sources.resolve`), the machine side checks commits out
(`agents.git_code.checkout`); credentials leave nothing behind."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from agents import git_code
from agents.git_code import GitCheckoutError, checkout, tree_key
from flows import git_sources
from flows.git_sources import GitCredential, resolve
from orgs.config import Settings, get_settings
from orgs.netguard import resolve as real_resolve
from policies.errors import Invalid
from tests.git_servers import GitDaemon, GitHttp, GitSshd, free_port, git

pytestmark = pytest.mark.timeout(120)


def _local() -> Settings:
    """The operator allowed 127.0.0.1 (the test servers); nothing else changes."""
    return get_settings().model_copy(update={"git_host_allowlist": "127.0.0.1/32"})


def _files(tree: Path) -> dict[str, str]:
    return {
        str(p.relative_to(tree)): p.read_text()
        for p in sorted(tree.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _mentions(root: Path, secret: str) -> list[Path]:
    """Files under `root` holding `secret` (the credential must be gone)."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if secret.encode() in path.read_bytes():
                    found.append(path)
            except PermissionError:
                found.append(path)
    return found


def _new_key() -> tuple[str, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return private, public


# ------------------------------------------------------------------ public: git://


def test_resolve_branches_tags_and_shas(git_daemon: GitDaemon) -> None:
    repo = git_daemon.repo("refs")
    first = repo.commit({"flow.py": "V = 1\n"})
    repo.tag("v1", annotated=True)
    repo.tag("light")
    dev = repo.commit({"flow.py": "V = 'dev'\n"}, branch="dev")
    url, settings = git_daemon.url(repo), _local()

    assert resolve(url, "main", settings=settings) == first
    assert resolve(url, "refs/heads/main", settings=settings) == first
    assert resolve(url, "v1", settings=settings) == first  # annotated: the commit, not the tag
    assert resolve(url, "light", settings=settings) == first
    assert resolve(url, "dev", settings=settings) == dev
    assert resolve(url, dev[:8], settings=settings) == dev  # an abbreviated tip
    assert resolve(url, first, settings=settings) == first
    git("push", "-q", "origin", "HEAD:refs/pull/7/head", cwd=repo.work)  # like GitHub's
    assert resolve(url, "refs/pull/7/head", settings=settings) == dev
    assert resolve(url, "HEAD", settings=settings) == first


def test_pinned_commit_keeps_its_content_after_new_commits(
    git_daemon: GitDaemon, tmp_path: Path
) -> None:
    repo = git_daemon.repo("pinned")
    old = repo.commit({"flow.py": "V = 1\n", "pkg/helper.py": "X = 'old'\n"})
    url, settings = git_daemon.url(repo), _local()
    assert resolve(url, "main", settings=settings) == old
    cache = tmp_path / "cache"
    # What an agent killed mid-fetch left: cleared by the next fetch of that tree.
    stale = cache / "git" / "tmp" / f"{tree_key(url, old)}-dead"
    (stale / "repo").mkdir(parents=True)
    tree = checkout(url, old, cache)
    assert _files(tree) == {"flow.py": "V = 1\n", "pkg/helper.py": "X = 'old'\n"}
    assert not stale.exists()

    new = repo.commit({"pkg/helper.py": "X = 'new'\n"}, message="new helper")
    assert new != old
    assert resolve(url, "main", settings=settings) == new  # the branch moved...
    # ...but the old commit (no ref tip any more) is still exactly itself: resolved by
    # its full sha, and checked out afresh on another machine's empty cache.
    assert resolve(url, old, settings=settings) == old
    fresh = checkout(url, old, tmp_path / "other-machine")
    assert _files(fresh)["pkg/helper.py"] == "X = 'old'\n"
    assert _files(checkout(url, new, cache))["pkg/helper.py"] == "X = 'new'\n"
    assert checkout(url, old, cache) == tree  # cached: the same tree

    # The tree is files only, read-only, without .git (no remote, nothing to push).
    assert not (tree / ".git").exists()
    assert not os.access(tree / "flow.py", os.W_OK) or os.geteuid() == 0
    assert (tree / "flow.py").stat().st_mode & 0o222 == 0
    assert tree.stat().st_mode & 0o222 == 0
    with pytest.raises(GitCheckoutError, match="not a full 40-digit"):
        checkout(url, old[:12], cache)


def test_wrong_ref_names_the_branches(git_daemon: GitDaemon) -> None:
    repo = git_daemon.repo("wrong")
    repo.commit({"a.py": ""})
    repo.commit({"b.py": ""}, branch="feature-x")
    url, settings = git_daemon.url(repo), _local()
    with pytest.raises(Invalid) as err:
        resolve(url, "mian", settings=settings)
    assert err.value.field == "ref"
    assert err.value.code == "git_ref_not_found"
    assert "'mian'" in err.value.detail and "feature-x, main" in err.value.detail
    with pytest.raises(Invalid, match="full 40 digits"):
        resolve(url, "abcdef12", settings=settings)
    with pytest.raises(Invalid) as err:
        resolve(url, "f" * 40, settings=settings)
    assert err.value.code == "git_ref_not_found"
    for bad in ("", "--upload-pack=touch /tmp/x", "a b", "x..y", "main^"):
        with pytest.raises(Invalid) as err:
            resolve(url, bad, settings=settings)
        assert err.value.field == "ref", bad


def test_unreachable_and_missing_repositories(git_daemon: GitDaemon, tmp_path: Path) -> None:
    settings = _local()
    dead = f"git://127.0.0.1:{free_port()}/nothing.git"
    with pytest.raises(Invalid) as err:
        resolve(dead, "main", settings=settings)
    assert (err.value.field, err.value.code) == ("git", "git_unreachable")
    assert err.value.detail.startswith(f"Cannot reach {dead}: ")

    missing = f"git://127.0.0.1:{git_daemon.port}/nope.git"
    with pytest.raises(Invalid) as err:
        resolve(missing, "main", settings=settings)
    assert (err.value.field, err.value.code) == ("git", "git_not_found")
    assert missing in err.value.detail

    with pytest.raises(Invalid) as err:
        resolve("https://no-such-host.invalid/team/repo.git", "main", settings=settings)
    assert err.value.code == "git_unreachable" and "cannot be resolved" in err.value.detail

    with pytest.raises(GitCheckoutError, match=r"Fetching .*nope\.git"):
        checkout(missing, "a" * 40, tmp_path / "cache")
    assert not list((tmp_path / "cache" / "git" / "tmp").iterdir())  # no half tree left


def test_server_refuses_internal_hosts_unless_allowed(git_daemon: GitDaemon) -> None:
    repo = git_daemon.repo("guarded")
    repo.commit({"a.py": ""})
    url = git_daemon.url(repo)
    strict = get_settings().model_copy(update={"git_host_allowlist": ""})
    with pytest.raises(Invalid) as err:
        resolve(url, "main", settings=strict)
    assert (err.value.field, err.value.code) == ("git", "git_host_refused")
    assert "127.0.0.1" in err.value.detail and "CSHARE_GIT_HOST_ALLOWLIST" in err.value.detail
    for internal in (
        "https://169.254.169.254/latest/meta-data.git",
        "ssh://git@10.0.0.1/team/repo.git",
        "git@192.168.1.10:team/repo.git",
    ):
        with pytest.raises(Invalid) as err:
            resolve(internal, "main", settings=strict)
        assert err.value.code == "git_host_refused", internal
    assert resolve(url, "main", settings=_local())


# ------------------------------------------------------------- private: https token


def test_private_https_needs_the_token(git_http: GitHttp, tmp_path: Path) -> None:
    repo = git_http.repo("private")
    sha = repo.commit({"flow.py": "SECRET_CODE = 1\n"})
    url, settings = git_http.url(repo), _local()

    with pytest.raises(Invalid) as err:
        resolve(url, "main", settings=settings)
    assert (err.value.field, err.value.code) == ("git", "git_auth_failed")
    assert "deploy-key generate" in err.value.detail and "git-token set" in err.value.detail

    wrong = GitCredential.token("not-the-token", git_http.user)
    with pytest.raises(Invalid) as err:
        resolve(url, "main", wrong, settings=settings)
    assert err.value.code == "git_auth_failed"
    assert "project's token" in err.value.detail and "not-the-token" not in err.value.detail

    good = GitCredential.token(git_http.token, git_http.user)
    assert git_http.token not in repr(good)
    assert resolve(url, "main", good, settings=settings) == sha

    cache = tmp_path / "cache"
    with pytest.raises(GitCheckoutError):
        checkout(url, sha, cache)
    before = set(Path(tempfile.gettempdir()).glob("cshare-git-*"))
    tree = checkout(url, sha, cache, good.material())
    assert _files(tree) == {"flow.py": "SECRET_CODE = 1\n"}
    assert _mentions(cache, git_http.token) == []
    assert set(Path(tempfile.gettempdir()).glob("cshare-git-*")) <= before
    # Plain http:// only because the operator allowed 127.0.0.1.
    with pytest.raises(Invalid, match="use https://"):
        resolve(url, "main", good, settings=get_settings())


def test_two_jobs_fetch_a_commit_once(git_http: GitHttp, tmp_path: Path) -> None:
    repo = git_http.repo("shared")
    sha = repo.commit({"flow.py": "X = 1\n"})
    material = GitCredential.token(git_http.token, git_http.user).material()
    cache, results, errors = tmp_path / "cache", [], []

    def job() -> None:
        try:
            results.append(checkout(git_http.url(repo), sha, cache, material))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=job) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(results) == 3 and len(set(results)) == 1
    packs = [p for p, status in git_http.requests if "git-upload-pack" in p and status == 200]
    assert len([p for p in packs if not p.endswith("info/refs?service=git-upload-pack")]) == 1


# ----------------------------------------------------------------- private: ssh key


def test_ssh_deploy_key(git_sshd: GitSshd, tmp_path: Path) -> None:
    repo = git_sshd.repo("keyed")
    sha = repo.commit({"flow.py": "VIA_SSH = True\n"})
    url, settings = git_sshd.url(repo), _local()
    private, public = _new_key()
    other_private, _ = _new_key()

    with pytest.raises(Invalid) as err:
        resolve(url, "main", settings=settings)
    assert err.value.code == "git_auth_failed", err.value.detail
    with pytest.raises(Invalid) as err:
        resolve(url, "main", GitCredential.ssh(private), settings=settings)
    assert err.value.code == "git_auth_failed"  # not authorized yet

    git_sshd.authorize(public)
    key = GitCredential.ssh(private)
    assert resolve(url, "main", key, settings=settings) == sha
    with pytest.raises(Invalid) as err:
        resolve(url, "main", GitCredential.ssh(other_private), settings=settings)
    assert err.value.code == "git_auth_failed"

    cache = tmp_path / "cache"
    with pytest.raises(GitCheckoutError):
        checkout(url, sha, cache)
    before = set(Path(tempfile.gettempdir()).glob("cshare-git-*"))
    tree = checkout(url, sha, cache, key.material())
    assert _files(tree) == {"flow.py": "VIA_SSH = True\n"}
    body = private.strip().splitlines()[1]  # a line of the key's base64
    assert _mentions(cache, body) == []
    assert set(Path(tempfile.gettempdir()).glob("cshare-git-*")) <= before
    resolve(url, "main", key, settings=settings)  # the server side's temp files go too
    assert set(Path(tempfile.gettempdir()).glob("cshare-git-*")) <= before


def test_a_server_serving_ref_tips_only(git_http: GitHttp, tmp_path: Path) -> None:
    """Protocol v0 without allowAnySHA1InWant: a commit behind a tip still resolves and
    checks out (through the branches' history); one on no branch is refused clearly."""
    git_http.protocol_v0 = True
    repo = git_http.repo("old-server", any_sha=False)
    old = repo.commit({"v.txt": "old\n"})
    repo.commit({"v.txt": "new\n"})
    gone = repo.commit({"v.txt": "gone\n"}, branch="tmp")
    git("push", "-q", "origin", ":refs/heads/tmp", cwd=repo.work)
    url, settings = git_http.url(repo), _local()
    cred = GitCredential.token(git_http.token, git_http.user)

    assert resolve(url, old, cred, settings=settings) == old
    tree = checkout(url, old, tmp_path / "cache", cred.material())
    assert (tree / "v.txt").read_text() == "old\n"
    with pytest.raises(Invalid) as err:
        resolve(url, gone, cred, settings=settings)
    assert err.value.code == "git_ref_not_found"  # (protocol v2 would serve it: no gc yet)
    with pytest.raises(GitCheckoutError, match="not on any branch or tag"):
        checkout(url, gone, tmp_path / "cache", cred.material())


def test_git_connects_to_the_checked_address_only(
    git_daemon: GitDaemon,
    git_http: GitHttp,
    git_sshd: GitSshd,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The guard's lookup is the one git uses: a name no DNS knows (`.invalid`), which the
    check resolves to 127.0.0.1, is reached over git://, http and ssh alike. Git looking
    the name up again (where DNS could answer differently: rebinding) would fail."""
    name = "gitsrv.invalid"
    monkeypatch.setattr(
        git_sources,
        "resolve_host",
        lambda host, port: real_resolve("127.0.0.1" if host == name else host, port),
    )
    settings = get_settings().model_copy(update={"git_host_allowlist": name})
    daemon_repo = git_daemon.repo("pin")
    sha = daemon_repo.commit({"a": "1"})
    assert resolve(f"git://{name}:{git_daemon.port}/pin.git", "main", settings=settings) == sha

    http_repo = git_http.repo("pin")
    sha = http_repo.commit({"a": "2"})
    token = GitCredential.token(git_http.token, git_http.user)
    url = f"http://{name}:{git_http.port}/pin.git"
    assert resolve(url, "main", token, settings=settings) == sha

    ssh_repo = git_sshd.repo("pin")
    sha = ssh_repo.commit({"a": "3"})
    private, public = _new_key()
    git_sshd.authorize(public)
    url = f"ssh://{git_sshd.user}@{name}:{git_sshd.port}{ssh_repo.bare}"
    assert resolve(url, "main", GitCredential.ssh(private), settings=settings) == sha


def test_prune_evicts_least_recently_used_trees(git_daemon: GitDaemon, tmp_path: Path) -> None:
    repo = git_daemon.repo("lru")
    url, cache = git_daemon.url(repo), tmp_path / "cache"
    shas = [repo.commit({"data.txt": str(i) * 1000}) for i in range(3)]
    trees = [checkout(url, sha, cache) for sha in shas]
    keys = [tree_key(url, sha) for sha in shas]
    stamps = cache / "git" / "stamps"
    for age, key in zip((300, 200, 100), keys, strict=True):  # 0 oldest ... 2 newest
        os.utime(stamps / f"{key}.json", (time.time() - age, time.time() - age))
    assert checkout(url, shas[0], cache) == trees[0]  # used again: now the newest
    assert [k for _u, k, _s in git_code.entries(cache)] == [keys[1], keys[2], keys[0]]
    assert all(size >= 1000 for _u, _k, size in git_code.entries(cache))

    assert git_code.prune(cache, max_bytes=2500, keep={keys[1]}) == [keys[2]]
    assert trees[0].is_dir() and trees[1].is_dir() and not trees[2].exists()
    assert git_code.prune(cache, max_bytes=0) == [keys[1], keys[0]]
    assert not any((cache / "git").glob("*-*")) and git_code.entries(cache) == []
    assert (checkout(url, shas[2], cache) / "data.txt").read_text() == "2" * 1000
