"""The command-line tools beside the daemon: ``procmond top``, ``watch`` and ``doctor``.

``top`` and ``watch`` read the running daemon's pinned probe when there is one, and load their
own otherwise; ``doctor`` says what the machine lacks to run procmond at all.
"""
