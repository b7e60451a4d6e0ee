"""Fork storms: when a command creates faster than ``storm_threshold``, log it with its PIDs.

``detector`` is the pure logic (rates, start, reminders, end; tested with a fake clock),
``monitor`` is its thread in the daemon, woken by the probe's alarm, and ``creators`` reads the
probe's per-process counting that ``procmond top`` shares.
"""
