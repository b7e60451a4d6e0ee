"""Listening on an address the host does not have yet, as at boot before the network is up:
the real daemon in a network namespace of its own, where the test adds the address later."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.harness import PROCMOND, Exposition

ADDRESS = "10.123.45.67"
SCRAPE = (
    "import sys, urllib.request;"
    "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
)


def test_an_address_that_comes_up_after_start_is_served(tmp_path: Path) -> None:
    config = tmp_path / "procmond.yaml"
    config.write_text(f'listen: "{ADDRESS}:10057"\n')
    log = tmp_path / "procmond.log"
    # A network of its own, with loopback up (with no interface up, any address binds) but not
    # the address; the shell execs procmond, which keeps its pid.
    start = 'ip link set lo up && exec "$@"'
    command = ["unshare", "--net", "--", "sh", "-c", start, "sh", *PROCMOND, "run"]
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            [*command, "--config", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while f"serving http://{ADDRESS}:10057/metrics" not in log.read_text():
            assert daemon.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        in_its_network = ["nsenter", "--target", str(daemon.pid), "--net", "--"]
        subprocess.run(
            [*in_its_network, "ip", "addr", "add", ADDRESS, "dev", "lo"], check=True, timeout=10
        )
        scraped = subprocess.run(
            [*in_its_network, sys.executable, "-c", SCRAPE, f"http://{ADDRESS}:10057/metrics"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert Exposition(scraped.stdout).value("procmond_scrape_success") == 1
    finally:
        daemon.terminate()
        assert daemon.wait(10) == 0, log.read_text()
