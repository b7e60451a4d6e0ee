"""The kernel side: the probe, its maps and everything that touches bpf().

The loader child compiles bpf/procmond.bpf.c with BCC and hands the descriptors over
(``bpf_loader``, ``handoff``), or the daemon adopts a pinned probe (``pins``); from then on the
daemon reads the maps through ``bpfmap`` and ``maps``, whose layouts come from the program's
own BTF (``layout``, ``btf``) and from bpf/procmond.h (``header``). ``features`` says what the
running kernel offers; ``privileges`` gives up capabilities once all is loaded. Nothing here
knows a metric name or a label.
"""
