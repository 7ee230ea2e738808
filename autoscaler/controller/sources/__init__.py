"""Where a pool's load comes from: each sidecar's ``/status`` (:mod:`.sidecars`) or Prometheus (:mod:`.prometheus`)."""
