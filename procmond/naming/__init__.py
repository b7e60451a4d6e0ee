"""Who a cgroup belongs to: its labels, and the authorities that name containers.

* :mod:`procmond.naming.labels`: the one labels type and the one cgroup id → labels adapter.
* :mod:`procmond.naming.runtime`: the interface a container runtime's source implements
  (recognise its containers' cgroups by their structure, name them from its state on disk),
  and the bounded, size-limited reading every source shares.
* One module per runtime: docker, podman, containerd (ctr and nerdctl), crio. The next runtime
  is one new module listed in :func:`procmond.naming.runtimes.runtimes`.

The kubelet's names (Kubernetes pods) stay in procmond/naming/kubelet.py and the path rules for the
kubepods tree in procmond/naming/cgroups.py, which asks these sources for everything outside it.
"""
