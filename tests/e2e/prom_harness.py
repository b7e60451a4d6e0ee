"""A real Prometheus server for the tests: it scrapes the real daemon and evaluates the shipped
rules every second, and answers its HTTP API on loopback. Debian's prometheus package (from the
test set-up) provides it; without it the tests that use it fail."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tests.e2e.harness import free_port

PROMETHEUS = "/usr/bin/prometheus"
JOB = "procmond"  # the job name the shipped rules expect
T = TypeVar("T")


@dataclass
class Prometheus:
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def call(self, path: str, **params: str) -> dict[str, Any]:
        """One API call; the decoded answer, errors included (a bad query is a 400 with JSON)."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.load(response)
        except urllib.error.HTTPError as error:
            return json.load(error)

    def api(self, path: str, **params: str) -> Any:
        answer = self.call(path, **params)
        assert answer["status"] == "success", (path, params, answer)
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing), as /api/v1/alerts lists them."""
        return self.api("alerts")["alerts"]

    def wait_until(self, what: str, check: Callable[[], T], timeout: float) -> T:
        """Polls check() every 0.2 s until it returns something true; fails after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout} s: {what}")
            time.sleep(0.2)

    def stop(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"prometheus ignored SIGTERM; log:\n{self.log()}") from None
        return self.process.returncode


def start_prometheus(
    tmp: Path,
    targets: list[str],
    rule_files: list[Path],
    ready_timeout: float = 30,
    job_settings: dict[str, Any] | None = None,
    other_jobs: list[dict[str, Any]] | None = None,
) -> Prometheus:
    """Prometheus on a free loopback port with its own storage under tmp, scraping targets
    in job "procmond" (with job_settings, e.g. scheme and tls_config, added to that job) and
    other_jobs' scrape configs, and evaluating rule_files every second."""
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {"job_name": JOB, "static_configs": [{"targets": targets}], **(job_settings or {})},
            *(other_jobs or []),
        ],
    }
    config_path = tmp / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = tmp / "prometheus.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(process, port, log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"prometheus exited {process.returncode}:\n{prometheus.log()}")
        try:
            with urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return prometheus
        except (urllib.error.URLError, ConnectionError):
            pass
        time.sleep(0.05)
    prometheus.stop()
    raise AssertionError(f"prometheus not ready after {ready_timeout} s:\n{prometheus.log()}")


def threshold_overrides(path: Path, overrides: list[tuple[str, float, dict[str, str]]]) -> Path:
    """A rules file of threshold overrides, as the README tells operators to write one:
    (threshold name, value, labels) each."""
    rules = [
        {"record": f"procmond:{name}_threshold:per_second", "expr": f"vector({value:g})"}
        | ({"labels": labels} if labels else {})
        for name, value, labels in overrides
    ]
    path.write_text(yaml.safe_dump({"groups": [{"name": "site-thresholds", "rules": rules}]}))
    return path
