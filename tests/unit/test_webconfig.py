from __future__ import annotations

import base64
import statistics
import sys
import time

import bcrypt
import pytest

from procmond.errors import ConfigError
from procmond.web.webconfig import SECURITY_HEADERS, BasicAuth, load_web_config

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


def test_an_unknown_user_costs_as_much_as_a_known_one(capsys) -> None:
    """No user enumeration by timing: an unknown user is refused after a bcrypt check against
    a decoy hash, as a known user with a wrong password is. Medians of interleaved tries; the
    bound is generous (it is a security property, not a performance claim): without the decoy
    an unknown user is refused about 100 times faster."""
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=6))
    auth = BasicAuth({"alice": hashed, "carol": bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4))})
    assert auth.allows(header("alice", "pw"))  # a cached login must not change the answer
    timings: dict[str, list[float]] = {"known": [], "unknown": []}
    for _ in range(31):
        for kind, user in (("known", "alice"), ("unknown", "mallory")):
            started = time.perf_counter()
            assert not auth.allows(header(user, "wrong"))
            timings[kind].append(time.perf_counter() - started)
    known, unknown = (statistics.median(timings[k]) for k in ("known", "unknown"))
    with capsys.disabled():
        print(f"\nmedian refusal: known user {known * 1e3:.2f} ms, unknown {unknown * 1e3:.2f} ms")
    assert 0.5 <= unknown / known <= 2, (known, unknown)


def test_an_unknown_user_with_a_known_users_password_is_refused() -> None:
    """The decoy is a real user's hash: its password must not let another name in."""
    auth = BasicAuth({"alice": HASH})
    assert not auth.allows(header("mallory", "pw"))
    assert auth.allows(header("alice", "pw"))
    assert not auth.allows(header("mallory", "pw"))  # nor once alice's login is cached


def test_without_bcrypt_basic_auth_is_a_config_error_naming_the_package(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "bcrypt", None)  # import bcrypt now raises ImportError
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  alice: '{HASH.decode()}'\n")
    with pytest.raises(ConfigError) as caught:
        load_web_config(str(path))
    assert caught.value.exit_code == 78
    (problem,) = caught.value.problems
    assert "bcrypt module, which is not installed" in problem
    assert "apt-get install python3-bcrypt" in problem and "procmond[auth]" in problem


def web(tmp_path, headers: str):
    path = tmp_path / "web.yml"
    path.write_text("http_server_config:\n  headers:\n" + headers)
    return load_web_config(str(path))


def test_the_security_headers_exporter_toolkit_allows() -> None:
    assert set(SECURITY_HEADERS) == {
        "Strict-Transport-Security",
        "X-Content-Type-Options",
        "X-Frame-Options",
        "X-XSS-Protection",
        "Content-Security-Policy",
    }


def test_security_headers_are_kept(tmp_path) -> None:
    settings = web(
        tmp_path,
        "    Strict-Transport-Security: max-age=31536000; includeSubDomains\n"
        "    X-Content-Type-Options: nosniff\n"
        "    X-Frame-Options: sameorigin\n"
        "    X-XSS-Protection: 0\n"
        "    Content-Security-Policy: \"default-src 'none'\"\n",
    )
    assert settings.headers == {
        "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "sameorigin",
        "X-XSS-Protection": "0",
        "Content-Security-Policy": "default-src 'none'",
    }


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ("    Content-Length: '0'\n", "'Content-Length' cannot be set; only Strict-Transport"),
        ("    Set-Cookie: a=b\n", "'Set-Cookie' cannot be set"),
        ("    x-frame-options: deny\n", "'x-frame-options' cannot be set"),
        ('    X-XSS-Protection: "1\\r\\nContent-Length: 0"\n', "without control characters"),
        ('    X-XSS-Protection: "1\\rX: y"\n', "without control characters"),
        ('    Content-Security-Policy: "a\\tb"\n', "without control characters"),
        ('    Content-Security-Policy: "caf\\xe9"\n', "must be printable ASCII"),
        ("    Strict-Transport-Security: ''\n", "must be printable ASCII"),
        ("    Strict-Transport-Security: [1]\n", "must be printable ASCII"),
        ("    X-Frame-Options: allow\n", "'allow' is not one of deny, sameorigin"),
        ("    X-Content-Type-Options: sniff\n", "'sniff' is not one of nosniff"),
    ],
)
def test_other_headers_and_bad_values_are_refused(tmp_path, headers: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        web(tmp_path, headers)
    (problem,) = caught.value.problems
    assert message in problem and "http_server_config.headers" in problem, problem


def test_a_malformed_hash_is_refused_at_load_not_at_login(tmp_path) -> None:
    path = tmp_path / "web.yml"
    path.write_text("basic_auth_users:\n  alice: $2y$10$short\n")
    with pytest.raises(ConfigError, match=r"basic_auth_users\.alice: must be a bcrypt hash"):
        load_web_config(str(path))
