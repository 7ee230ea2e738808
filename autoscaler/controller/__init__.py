"""The live controller: observe each pool in the cluster, decide with :mod:`autoscaler.policy`, act.

* :mod:`.loop`: the cycle and the ConfigMap's hot reload; :mod:`.pools`: each pool's caches and refusals;
* :mod:`.observe`: pods and their load; :mod:`.sources`: the sidecars' ``/status`` or a Prometheus query;
* :mod:`.actuate`: every write, and the one check of whether a write is allowed (leader, dry run);
* :mod:`.kube`, :mod:`.watching`, :mod:`.leadership`: the API calls, watch caches, the Lease;
* :mod:`.metrics`, :mod:`.running`: the Prometheus metrics, and ``buildkit-autoscaler run``.

It never imports the simulator (:mod:`autoscaler.simulator`).
"""
