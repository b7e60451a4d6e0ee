"""The kernel side of procmond: C sources shipped as package data (``procmond.bpf``)."""
