"""procmond: process-creation metrics from eBPF, for Prometheus."""

__version__ = "0.1.0"
