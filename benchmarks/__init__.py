"""procmond's benchmark: its overhead and limits, measured against the targets it was built
for. Run it with ``./scripts/dev.sh bench`` (as root); ``--quick`` for a smoke run."""
