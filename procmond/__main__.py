"""The ``procmond`` command (and ``python -m procmond``).

Its first act is to hold SIGHUP, SIGINT and SIGTERM (procmond/signals.py): importing the rest
takes ~0.1 s, the daemon's modules ~0.2 s, and until the daemon has its handlers a SIGHUP or a
SIGTERM would kill it.
"""

import sys

from procmond import signals


def main() -> int:
    signals.hold()
    from procmond.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
