"""Git sources without a server: URLs, the SSRF guard and how git is pinned to the checked
address, ref matching, and credentials reaching git only through 0600 temp files."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agents.git_code import GitCheckoutError, checkout, tree_key
from datasets import gitauth
from flows.git_credentials import fingerprint, load_private_key
from flows.git_sources import (
    GitCredential,
    check_destination,
    match_ref,
    parse_ls_remote,
    parse_url,
)
from orgs.config import Settings, get_settings
from policies.errors import Invalid

A, B, C = "a" * 40, "b" * 40, "c" * 40


def _settings(allow: str = "") -> Settings:
    return get_settings().model_copy(update={"git_host_allowlist": allow})


@pytest.mark.parametrize(
    ("url", "scheme", "host", "port"),
    [
        ("https://github.com/team/repo.git", "https", "github.com", 443),
        ("https://git.example.com:8443/team/repo", "https", "git.example.com", 8443),
        ("git://git.kernel.org/pub/scm/git/git.git", "git", "git.kernel.org", 9418),
        ("ssh://git@gitlab.com:2222/group/repo.git", "ssh", "gitlab.com", 2222),
        ("git@github.com:team/repo.git", "ssh", "github.com", 22),
    ],
)
def test_parse_url(url: str, scheme: str, host: str, port: int) -> None:
    parsed = parse_url(url)
    assert (parsed.scheme, parsed.host, parsed.port) == (scheme, host, port)


@pytest.mark.parametrize(
    "url",
    [
        "https://user:token@github.com/team/repo.git",
        "git://user@host/repo.git",
        "ftp://host/repo.git",
        "file:///etc/passwd",
        "ext::sh -c touch% /tmp/pwned",
        "/local/path/repo.git",
        "-uhttps://host/x",
        "ssh://-oProxyCommand@host/repo.git",
        "-oProxyCommand@host:repo.git",
        "ssh://git@-host/repo.git",
        "https://host/repo\u202e.git",
        "https://[::ffff:169.254.169.254]/x.git",  # IP literals in brackets: not accepted
    ],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(Invalid) as err:
        parse_url(url, allow_http=True)
    assert err.value.field in ("git", "git_url")


def test_plain_http_only_for_allowed_hosts() -> None:
    with pytest.raises(Invalid, match="use https://"):
        parse_url("http://127.0.0.1:8080/repo.git")
    assert parse_url("http://127.0.0.1:8080/repo.git", allow_http=True).port == 8080
    with pytest.raises(Invalid, match="use https://"):
        check_destination("http://127.0.0.1:8080/repo.git", settings=_settings())
    dest = check_destination("http://127.0.0.1:8080/repo.git", settings=_settings("127.0.0.1/32"))
    assert dest.config["http.curloptResolve"] == "127.0.0.1:8080:127.0.0.1"


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/repo.git",
        "https://169.254.169.254/latest.git",
        "git://10.1.2.3/repo.git",
        "ssh://git@192.168.0.5/repo.git",
        "git@172.16.0.1:team/repo.git",
        "https://localhost/repo.git",
    ],
)
def test_internal_destinations_are_refused(url: str) -> None:
    with pytest.raises(Invalid) as err:
        check_destination(url, settings=_settings())
    assert (err.value.field, err.value.code) == ("git", "git_host_refused")
    assert "CSHARE_GIT_HOST_ALLOWLIST" in err.value.detail


def test_git_is_pinned_to_the_checked_address() -> None:
    allow = _settings("127.0.0.1/32,10.0.0.0/8")
    https = check_destination("https://10.1.2.3:8443/team/repo.git", settings=allow)
    assert https.config == {
        "http.followRedirects": "false",
        "http.curloptResolve": "10.1.2.3:8443:10.1.2.3",
    }
    assert https.fetch_url == "https://10.1.2.3:8443/team/repo.git"
    ssh = check_destination("git@10.0.0.7:team/repo.git", settings=allow)
    assert ssh.ssh_host_name == "10.0.0.7" and ssh.fetch_url == "git@10.0.0.7:team/repo.git"
    # git:// has no resolve override: git is given the checked address itself.
    daemon = check_destination("git://localhost:9999/repo.git", settings=_settings("localhost"))
    assert daemon.fetch_url in ("git://127.0.0.1:9999/repo.git", "git://[::1]:9999/repo.git")


def test_ls_remote_and_ref_matching() -> None:
    listed = parse_ls_remote(
        "ref: refs/heads/main\tHEAD\n"
        f"{A}\tHEAD\n"
        f"{A}\trefs/heads/main\n"
        f"{B}\trefs/heads/release\n"
        f"{C}\trefs/tags/release\n"
        f"{C}\trefs/tags/v1\n"
        f"{B}\trefs/tags/v1^{{}}\n"
        "garbage line\n"
    )
    assert "garbage line" not in listed and listed["HEAD"] == A
    assert match_ref(listed, "main") == A
    assert match_ref(listed, "HEAD") == A
    assert match_ref(listed, "v1") == B  # annotated tag: the commit it points to
    assert match_ref(listed, "release") == C  # like git: a tag before a branch
    assert match_ref(listed, "refs/heads/release") == B
    assert match_ref(listed, "aaaaaaa") == A  # a prefix of exactly one tip
    assert match_ref(listed, "d" * 40) is None  # not a tip: resolve() asks the server
    assert match_ref(listed, "nope") is None


def test_credential_never_shows_its_secret() -> None:
    token = GitCredential.token("ghp_verysecret")
    key = GitCredential.ssh("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n")
    assert "verysecret" not in repr(token) and "abc" not in repr(key)
    assert token.material() == {
        "kind": "token",
        "user": "x-access-token",
        "token": "ghp_verysecret",
    }
    assert GitCredential.token("t", "oauth2").material()["user"] == "oauth2"
    assert key.material()["kind"] == "ssh"


def test_git_env_is_clean_and_leaves_nothing(tmp_path: Path) -> None:
    material = {"kind": "token", "user": "oauth2", "token": "tok-s3cret"}
    with gitauth.git_env(material, temp_root=tmp_path, extra_config={"a.b": "c"}) as env:
        askpass = Path(env["GIT_ASKPASS"])
        work = askpass.parent
        assert stat.S_IMODE(work.stat().st_mode) == 0o700
        for name in ("user", "token", "askpass"):
            assert stat.S_IMODE((work / name).stat().st_mode) in (0o600, 0o700)
        assert all("tok-s3cret" not in value for value in env.values())
        assert env["GIT_TERMINAL_PROMPT"] == "0" and env["GIT_CONFIG_NOSYSTEM"] == "1"
        assert env["GIT_CONFIG_GLOBAL"] == os.devnull
        assert env["GIT_ALLOW_PROTOCOL"] == "https:http:ssh:git"
        assert (env["GIT_CONFIG_KEY_0"], env["GIT_CONFIG_VALUE_0"]) == ("a.b", "c")
        assert "SSH_AUTH_SOCK" not in env and "http_proxy" not in env
        ask = [str(askpass)]
        assert (
            subprocess.run([*ask, "Username for x"], capture_output=True, text=True).stdout
            == "oauth2"
        )
        assert (
            subprocess.run([*ask, "Password for x"], capture_output=True, text=True).stdout
            == "tok-s3cret"
        )
    assert list(tmp_path.iterdir()) == []

    key = {"kind": "ssh", "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nk\n"}
    with pytest.raises(RuntimeError), gitauth.git_env(key, temp_root=tmp_path) as env:
        key_file = Path(env["GIT_SSH_COMMAND"].split(" -i ")[1].split()[0])
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert "IdentitiesOnly=yes" in env["GIT_SSH_COMMAND"]
        assert "StrictHostKeyChecking=accept-new" in env["GIT_SSH_COMMAND"]
        raise RuntimeError("git failed")
    assert list(tmp_path.iterdir()) == []  # removed on errors too

    assert gitauth.scrub("fatal: tok-s3cret leaked", material) == "fatal: *** leaked"
    for bad in ({"kind": "ssh"}, {"kind": "token", "token": ""}, {"kind": "password"}):
        with pytest.raises(gitauth.BadCredential):
            gitauth.check_material(bad)


def test_checkout_wants_a_full_sha(tmp_path: Path) -> None:
    with pytest.raises(GitCheckoutError, match="40-digit"):
        checkout("https://example.com/r.git", "main", tmp_path)
    with pytest.raises(gitauth.BadCredential):
        checkout("https://example.com/r.git", A, tmp_path, {"kind": "nope"})
    with pytest.raises(GitCheckoutError, match="not a Git repository URL"):
        checkout("--upload-pack=touch /tmp/x", A, tmp_path)
    assert tree_key("https://example.com/r.git", A) != tree_key("https://example.com/s.git", A)


def test_private_key_checks(tmp_path: Path) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505

    pem = weak.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    with pytest.raises(Invalid, match="at least 2048 bits"):
        load_private_key(pem)
    path = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(path)], check=True)
    key = load_private_key(path.read_text())
    line = (tmp_path / "k.pub").read_text()
    printed = subprocess.run(
        ["ssh-keygen", "-lf", str(path) + ".pub"], capture_output=True, text=True
    )
    assert fingerprint(line) == printed.stdout.split()[1]
    assert key.public_key() is not None
