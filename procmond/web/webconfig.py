"""TLS and basic auth for /metrics, from a Prometheus exporter-toolkit web config file.

Operators already have these files for node_exporter and Prometheus, so procmond reads the same
format (``tls_server_config``, ``basic_auth_users`` with bcrypt hashes, ``http_server_config``).
Settings procmond cannot honour exactly (Go cipher-suite names, SAN allow-lists) are refused
with a clear error rather than silently ignored, since each of them tightens security.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from procmond.errors import ConfigError

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_KEYS = {
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
}
UNSUPPORTED_TLS_KEYS = {
    "cipher_suites",
    "curve_preferences",
    "prefer_server_cipher_suites",
    "client_allowed_sans",
}
HTTP_KEYS = {"headers", "http2"}
# The response headers a web config may set, as exporter-toolkit allows them (its
# extraHTTPHeaders): security headers only, so that no config can forge Content-Length or
# Content-Type. A list of values is an enumeration; None means any printable-ASCII value.
SECURITY_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
TOP_KEYS = {"tls_server_config", "basic_auth_users", "http_server_config"}
MAX_CACHED_LOGINS = 64
BCRYPT_HASH = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")  # as htpasswd -B writes them
PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]+")


@dataclass
class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes.

    A bcrypt check costs tens of milliseconds by design; successful logins are cached (as
    exporter-toolkit does) so a scrape every few seconds costs nothing, and checks are done one
    at a time so that a flood of wrong passwords costs at most one core.

    Every failed login costs one bcrypt check, whether or not the user exists: an unknown user
    is checked against a decoy hash, the configured hash of the highest cost, and refused
    whatever the result. Otherwise the response time would tell which user names exist.
    """

    users: dict[str, bytes]
    _good: set[tuple[str, bytes]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _decoy: bytes | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.users:
            self._decoy = max(self.users.values(), key=bcrypt_cost)

    def allows(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        known = user in self.users
        hashed = self.users[user] if known else self._decoy
        if hashed is None:
            return False
        key = (user, hmac.digest(hashed, password.encode(), "sha256"))
        with self._lock:
            if key in self._good:
                return True
            import bcrypt

            matches = bcrypt.checkpw(password.encode(), hashed)
            if not (known and matches):
                return False
            if len(self._good) >= MAX_CACHED_LOGINS:
                self._good.clear()
            self._good.add(key)
            return True


def bcrypt_cost(hashed: bytes) -> int:
    """The cost of a ``$2y$10$...`` hash (validated by the loader): 2^cost rounds."""
    return int(hashed[4:6])


@dataclass
class WebSettings:
    """What the HTTP server applies to each connection and request."""

    ssl_context: ssl.SSLContext | None = None
    basic_auth: BasicAuth | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context else "http"


def load_web_config(path: str) -> WebSettings:
    """Read and check the web config file (empty path: plain HTTP, no auth)."""
    if not path:
        return WebSettings()
    source = Path(path)
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read web config: {exc.strerror}"]) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(
            [f"{path}: web config is not valid YAML: {exc}".splitlines()[0]]
        ) from None
    data = data or {}
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a mapping at the top level"])
    _unknown(data, TOP_KEYS, path, "", problems)
    settings = WebSettings()
    tls = data.get("tls_server_config")
    if tls is not None:
        settings.ssl_context = _ssl_context(tls, source, problems)
    users = data.get("basic_auth_users")
    if users is not None:
        settings.basic_auth = _basic_auth(users, path, problems)
    http = data.get("http_server_config")
    if http is not None:
        settings.headers = _headers(http, path, problems)
    if problems:
        raise ConfigError(problems)
    return settings


def _unknown(
    data: dict[str, Any], known: set[str], path: str, prefix: str, problems: list[str]
) -> None:
    for key in data:
        if key not in known:
            problems.append(
                f"{path}: {prefix}{key}: unknown key (known: {', '.join(sorted(known))})"
            )


def _file(tls: dict[str, Any], key: str, base: Path, problems: list[str]) -> str | None:
    value = tls.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        problems.append(f"{base}: tls_server_config.{key}: must be a file path")
        return None
    file = (base.parent / value) if not Path(value).is_absolute() else Path(value)
    if not file.is_file():
        problems.append(f"{base}: tls_server_config.{key}: {file}: no such file")
        return None
    return str(file)


def _ssl_context(tls: Any, path: Path, problems: list[str]) -> ssl.SSLContext | None:
    if not isinstance(tls, dict):
        problems.append(f"{path}: tls_server_config: must be a mapping")
        return None
    for key in tls:
        if key in UNSUPPORTED_TLS_KEYS:
            problems.append(
                f"{path}: tls_server_config.{key}: not supported by procmond; "
                "remove it (procmond uses OpenSSL's defaults)"
            )
    _unknown(tls, TLS_KEYS | UNSUPPORTED_TLS_KEYS, str(path), "tls_server_config.", problems)
    cert, key = _file(tls, "cert_file", path, problems), _file(tls, "key_file", path, problems)
    if "cert_file" not in tls or "key_file" not in tls:
        problems.append(f"{path}: tls_server_config: needs both cert_file and key_file")
    auth = tls.get("client_auth_type", "NoClientCert")
    if auth not in CLIENT_AUTH:
        problems.append(
            f"{path}: tls_server_config.client_auth_type: {auth!r} is not one of "
            f"{', '.join(CLIENT_AUTH)}"
        )
    ca = _file(tls, "client_ca_file", path, problems)
    if (
        CLIENT_AUTH.get(auth) in (ssl.CERT_OPTIONAL, ssl.CERT_REQUIRED)
        and "client_ca_file" not in tls
    ):
        problems.append(f"{path}: tls_server_config.client_auth_type {auth} needs client_ca_file")
    versions = {}
    for bound in ("min_version", "max_version"):
        value = tls.get(bound)
        if value is not None and value not in TLS_VERSIONS:
            problems.append(
                f"{path}: tls_server_config.{bound}: {value!r} is not one of "
                f"{', '.join(TLS_VERSIONS)}"
            )
        versions[bound] = TLS_VERSIONS.get(value)
    if problems or cert is None or key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = versions["min_version"] or ssl.TLSVersion.TLSv1_2
    if versions["max_version"]:
        context.maximum_version = versions["max_version"]
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        problems.append(f"{path}: tls_server_config: cannot load {cert} with {key}: {exc}")
        return None
    context.verify_mode = CLIENT_AUTH[auth]
    if ca:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            problems.append(f"{path}: tls_server_config.client_ca_file: cannot load {ca}: {exc}")
            return None
    return context


def _basic_auth(users: Any, path: str, problems: list[str]) -> BasicAuth | None:
    if not isinstance(users, dict) or not users:
        problems.append(f"{path}: basic_auth_users: must map user names to bcrypt hashes")
        return None
    hashes = {}
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not BCRYPT_HASH.fullmatch(hashed):
            problems.append(
                f"{path}: basic_auth_users.{user}: must be a bcrypt hash "
                "(htpasswd -nBC 10 \"\" | tr -d ':\\n')"
            )
            continue
        hashes[str(user)] = hashed.encode()
    try:
        import bcrypt  # noqa: F401
    except ImportError:
        problems.append(
            f"{path}: basic_auth_users needs the Python bcrypt module, which is not installed: "
            "apt-get install python3-bcrypt (or pip install 'procmond[auth]')"
        )
    return BasicAuth(hashes)


def _headers(http: Any, path: str, problems: list[str]) -> dict[str, str]:
    if not isinstance(http, dict):
        problems.append(f"{path}: http_server_config: must be a mapping")
        return {}
    _unknown(http, HTTP_KEYS, path, "http_server_config.", problems)
    headers = http.get("headers") or {}
    where = f"{path}: http_server_config.headers"
    if not isinstance(headers, dict):
        problems.append(f"{where}: must map header names to values")
        return {}
    checked = {}
    for name, value in headers.items():
        if name not in SECURITY_HEADERS:
            problems.append(
                f"{where}: {name!r} cannot be set; only {', '.join(SECURITY_HEADERS)} can"
            )
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # X-XSS-Protection: 0, as Go's YAML decoder reads it
        allowed = SECURITY_HEADERS[name]
        if not isinstance(value, str) or not value or not PRINTABLE_ASCII.fullmatch(value):
            problems.append(
                f"{where}.{name}: {value!r} must be printable ASCII, without control "
                "characters such as CR or LF"
            )
        elif allowed is not None and value not in allowed:
            problems.append(f"{where}.{name}: {value!r} is not one of {', '.join(allowed)}")
        else:
            checked[name] = value
    return checked
