"""The daemon's life: start (load or adopt the probe), serve, reload, stop.

``daemon`` wires the stages together and owns the order of start and stop; ``sources`` wires
the cgroup naming, attribution and task limits from the config; ``state`` keeps the
counts held in user space across a restart that adopts the pinned probe; ``systemd`` tells the
service manager when it is ready, reloading or stopping.
"""
