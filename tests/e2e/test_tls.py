"""TLS and basic auth on /metrics, with real certificates and the exporter-toolkit format."""

from __future__ import annotations

import base64
import re
import socket
import ssl
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest
import yaml

from tests.e2e.harness import Daemon, free_port, procmond, start_daemon
from tests.e2e.prom_harness import start_prometheus
from tests.e2e.tls import Certs, make_certs

PASSWORD = "s3cret: with colon"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def web_config(folder: Path, certs: Certs, extra: str = "") -> Path:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    path = folder / "web.yml"
    path.write_text(
        "tls_server_config:\n"
        f"  cert_file: {certs.server_cert}\n"
        f"  key_file: {certs.server_key}\n"
        "  min_version: TLS12\n"
        f"{extra}"
        "basic_auth_users:\n"
        f"  prometheus: '{hashed}'\n"
        "http_server_config:\n"
        "  headers:\n"
        "    X-Content-Type-Options: nosniff\n"
    )
    return path


def https_get(
    daemon: Daemon,
    certs: Certs,
    password: str | None = PASSWORD,
    client_cert: bool = False,
    user: str = "prometheus",
) -> tuple[int, str, dict[str, str]]:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if client_cert:
        context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    request = urllib.request.Request(f"https://127.0.0.1:{daemon.port}/metrics")
    if password is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


@pytest.fixture(scope="module")
def tls_daemon(tmp_path_factory: pytest.TempPathFactory, certs: Certs):
    folder = tmp_path_factory.mktemp("tls")
    web = web_config(folder, certs)
    d = start_daemon(folder, f"web_config_file: {web}\n", tls=True)
    yield d
    assert d.stop() == 0, d.log()


def test_https_with_basic_auth(tls_daemon: Daemon, certs: Certs) -> None:
    status, body, headers = https_get(tls_daemon, certs)
    assert status == 200 and "procmond_forks_total" in body
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "serving https://" in tls_daemon.log()


@pytest.mark.parametrize("password", [None, "wrong", PASSWORD + "x", ""])
def test_wrong_or_missing_password_is_401(
    tls_daemon: Daemon, certs: Certs, password: str | None
) -> None:
    status, _, headers = https_get(tls_daemon, certs, password)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic realm=")


def test_response_time_does_not_tell_which_users_exist(tls_daemon: Daemon, certs: Certs) -> None:
    """A wrong password for the configured user and any password for an unknown user are
    refused alike, after one bcrypt check each (cost 10 here): medians of interleaved HTTPS
    requests, within a generous bound (a security property, not a performance claim)."""
    timings: dict[str, list[float]] = {"prometheus": [], "mallory": []}
    for _ in range(15):
        for user, times in timings.items():
            started = time.perf_counter()
            assert https_get(tls_daemon, certs, "wrong", user=user)[0] == 401
            times.append(time.perf_counter() - started)
    known, unknown = (statistics.median(timings[u]) for u in ("prometheus", "mallory"))
    print(
        f"\nmedian 401 over HTTPS: known user {known * 1e3:.1f} ms, unknown {unknown * 1e3:.1f} ms"
    )
    assert 0.5 <= unknown / known <= 2, (known, unknown)


def test_plain_http_on_the_tls_port_does_not_hang(tls_daemon: Daemon, certs: Certs) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", tls_daemon.port), timeout=15) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        while s.recv(4096):
            pass
    assert time.monotonic() - started < 12
    assert https_get(tls_daemon, certs)[0] == 200


def test_silent_clients_do_not_hold_up_the_handshakes_of_others(
    tls_daemon: Daemon, certs: Certs
) -> None:
    silent = [socket.create_connection(("127.0.0.1", tls_daemon.port)) for _ in range(50)]
    try:
        started = time.monotonic()
        assert https_get(tls_daemon, certs)[0] == 200
        assert time.monotonic() - started < 1.0
    finally:
        for s in silent:
            s.close()


def test_required_client_certificate(tmp_path: Path, certs: Certs) -> None:
    extra = f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {certs.ca}\n"
    web = web_config(tmp_path, certs, extra)
    daemon = start_daemon(tmp_path, f"web_config_file: {web}\n", tls=True)
    try:
        with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
            https_get(daemon, certs)
        assert https_get(daemon, certs, client_cert=True)[0] == 200
    finally:
        assert daemon.stop() == 0


BAD_WEB_CONFIGS = [
    ("tls_server_config:\n  cert_file: /nope.crt\n  key_file: /nope.key\n", "no such file"),
    (
        "tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n  client_auth_type: Maybe\n",
        "client_auth_type: 'Maybe' is not one of",
    ),
    (
        "tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n"
        "  client_auth_type: RequireAndVerifyClientCert\n",
        "needs client_ca_file",
    ),
    (
        "tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n  cipher_suites: [X]\n",
        "cipher_suites: not supported",
    ),
    ("tls_server_config:\n  cert_file: {key}\n  key_file: {key}\n", "cannot load"),
    ("basic_auth_users:\n  alice: plaintext\n", "must be a bcrypt hash"),
    ("tls_config:\n  x: 1\n", "tls_config: unknown key"),
    ("basic_auth_users: [\n", "not valid YAML"),
    (
        "http_server_config:\n  headers:\n    Content-Length: '0'\n",
        "'Content-Length' cannot be set",
    ),
    (
        'http_server_config:\n  headers:\n    X-XSS-Protection: "1\\rSet-Cookie: a=b"\n',
        "without control characters such as CR or LF",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_WEB_CONFIGS)
def test_bad_web_config_exits_78(tmp_path: Path, certs: Certs, text: str, message: str) -> None:
    web = tmp_path / "web.yml"
    web.write_text(text.format(crt=certs.server_cert, key=certs.server_key))
    config = tmp_path / "c.yaml"
    config.write_text(f'listen: "127.0.0.1:{free_port()}"\nweb_config_file: {web}\n')
    for args in (["run", "--config", str(config)], ["check-config", str(config)]):
        result = procmond(*args)
        assert result.returncode == 78, result.stderr
        assert message in result.stderr and str(web) in result.stderr
        assert "Traceback" not in result.stderr


def test_prometheus_scrapes_over_tls_with_basic_auth(
    tls_daemon: Daemon, certs: Certs, tmp_path: Path
) -> None:
    settings = {
        "scheme": "https",
        "tls_config": {"ca_file": str(certs.ca)},
        "basic_auth": {"username": "prometheus", "password": PASSWORD},
    }
    prometheus = start_prometheus(
        tmp_path, [f"127.0.0.1:{tls_daemon.port}"], [], job_settings=settings
    )
    try:
        up = prometheus.wait_until(
            "Prometheus scraped procmond over TLS",
            lambda: prometheus.query('up{job="procmond"} == 1'),
            timeout=30,
        )
        assert up
        assert prometheus.query('procmond_build_info{job="procmond"}')
    finally:
        prometheus.stop()


def test_readme_tls_scrape_example_passes_promtool(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    (block,) = [
        b for b in re.findall(r"```yaml\n(.*?)```", readme, re.DOTALL) if "scheme: https" in b
    ]
    job = yaml.safe_load(block)["scrape_configs"][0]
    job["tls_config"]["ca_file"] = str(tmp_path / "ca.crt")
    job["basic_auth"]["password_file"] = str(tmp_path / "password")
    (tmp_path / "ca.crt").write_text("")
    (tmp_path / "password").write_text("x\n")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({"scrape_configs": [job]}))
    result = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
