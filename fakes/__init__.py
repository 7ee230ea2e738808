"""Fake peers at the wire, for the tests, the benchmarks and the demos.

* :mod:`fakes.buildkitd`: a real in-process ``grpc.aio`` server speaking BuildKit's control API;
* :mod:`fakes.kubernetes`: a stateful Kubernetes API server over HTTP (kmock), for the real
  kubernetes-asyncio client.

Not part of the shipped programs (the layering check keeps them out of ``sidecar`` and ``autoscaler``).
"""
