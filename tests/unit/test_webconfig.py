from __future__ import annotations

import base64

import bcrypt
import pytest

from procmond.errors import ConfigError
from procmond.webconfig import BasicAuth, load_web_config

HASH = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4))


def header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_basic_auth_checks_and_caches() -> None:
    auth = BasicAuth({"alice": HASH})
    assert auth.allows(header("alice", "pw"))
    assert auth.allows(header("alice", "pw"))  # from the cache
    assert not auth.allows(header("alice", "pW"))
    assert not auth.allows(header("bob", "pw"))
    for bad in (None, "", "Bearer x", "Basic !!!", "Basic " + base64.b64encode(b"\xff").decode()):
        assert not auth.allows(bad)


def test_empty_path_means_plain_http() -> None:
    web = load_web_config("")
    assert web.ssl_context is None and web.basic_auth is None and web.scheme == "http"


def test_every_problem_is_listed(tmp_path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("tls_server_config:\n  min_version: TLS9\nbasic_auth_users:\n  a: b\nx: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_web_config(str(path))
    text = "\n".join(caught.value.problems)
    assert "x: unknown key" in text
    assert "needs both cert_file and key_file" in text
    assert "min_version: 'TLS9' is not one of" in text
    assert "basic_auth_users.a: must be a bcrypt hash" in text
