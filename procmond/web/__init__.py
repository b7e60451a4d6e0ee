"""HTTP: the metrics endpoint, its connections and its web config (TLS, basic auth).

``server`` answers requests, ``connections`` keeps the sockets (deadlines, caps, eviction),
``webconfig`` reads the Prometheus exporter-toolkit's web config file, ``negotiation`` picks
the format a client gets. It knows nothing of the probe: the daemon hands it a function that
renders a scrape.
"""
