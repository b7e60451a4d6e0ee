"""The scrape: kernel map rows placed under their labels and written out for Prometheus.

One scrape is a pipeline, run by ``collector``: ``read`` reads every map once, ``placement``
places each map's rows under their labels (``attribution`` names cgroups, folding gone and
late-named ones so that no count moves or is lost), ``exposition`` writes the placed rows in
the text format, or ``families`` as prometheus_client's families, and ``selfmetrics`` adds
procmond's metrics about itself. ``metrics`` says which metric each map becomes and which
labels it carries; ``tasklimits`` adds the pids controller's refusals.
"""
