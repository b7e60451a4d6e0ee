"""The scrape: kernel map rows placed under their labels and written out for Prometheus.

``metrics`` says which metric each counter map becomes and which labels it carries;
``attribution`` places rows of cgroups under the names they have (folding gone and late-named
cgroups so that no count moves or is lost); ``tasklimits`` adds the pids controller's refusals;
``collector`` runs one scrape and ``exposition`` writes it in the text format.
"""
