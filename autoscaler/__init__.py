"""The per-arch autoscaler for BuildKit builder Deployments, and its what-if simulator.

* :mod:`autoscaler.config`: the ConfigMap's schema, loading and errors (pure);
* :mod:`autoscaler.policy`: the decision core, shared by both sides (pure);
* :mod:`autoscaler.controller`: the live controller (Kubernetes API, sidecars, Lease);
* :mod:`autoscaler.simulator`: the offline what-if simulator;
* :mod:`autoscaler.cli`: ``buildkit-autoscaler``, the one command line over both.
"""
