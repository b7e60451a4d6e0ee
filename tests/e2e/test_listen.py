"""Listening on an address the host does not have yet, as at boot before the network is up:
the real daemon in a network namespace of its own, where the test adds the address later.
It serves, and says in one log line (and check-config in a warning) that the address is not
on the host, as a typo would be too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.e2e.harness import PROCMOND, Exposition, start_daemon

ADDRESS = "10.123.45.67"
NOT_ON_HOST = (
    f"listen address {ADDRESS} is not on any interface of this host: nothing reaches procmond "
    "there until the address is added (it is bound anyway, so that procmond can start before "
    "the network at boot); if it is a mistake, set listen to an address of this host (ip "
    '-brief address) or to ":10057" for every interface'
)
SCRAPE = (
    "import sys, urllib.request;"
    "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
)


def check_config(in_its_network: list[str], config: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*in_its_network, *PROCMOND, "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_address_that_comes_up_after_start_is_served(tmp_path: Path) -> None:
    # A network of its own, with loopback up (with no interface up, any address binds) but not
    # the address; the shell execs procmond, which keeps its pid.
    start = 'ip link set lo up && exec "$@"'
    daemon = start_daemon(
        tmp_path,
        f'listen: "{ADDRESS}:10057"\n',
        command=["unshare", "--net", "--", "sh", "-c", start, "sh", *PROCMOND],
        listen_in_file=False,
        logged=f"serving http://{ADDRESS}:10057/metrics",
    )
    config, log = daemon.config_path, daemon.log_path
    try:
        warnings = [line for line in log.read_text().splitlines() if "WARNING" in line]
        assert [line.split(" WARNING ", 1)[1] for line in warnings] == [NOT_ON_HOST]
        in_its_network = ["nsenter", "--target", str(daemon.process.pid), "--net", "--"]
        checked = check_config(in_its_network, config)
        assert checked.returncode == 0, checked.stderr  # a warning: the unit runs it at boot
        assert checked.stderr == f"procmond: config warning: {config}: {NOT_ON_HOST}\n"
        assert checked.stdout.startswith(f"{config}: OK; ")
        subprocess.run(
            [*in_its_network, "ip", "addr", "add", ADDRESS, "dev", "lo"], check=True, timeout=10
        )
        checked = check_config(in_its_network, config)
        assert (checked.returncode, checked.stderr) == (0, "")
        scraped = subprocess.run(
            [*in_its_network, sys.executable, "-c", SCRAPE, f"http://{ADDRESS}:10057/metrics"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert Exposition(scraped.stdout).value("procmond_scrape_success") == 1
    finally:
        assert daemon.stop() == 0, log.read_text()
