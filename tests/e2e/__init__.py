"""End-to-end: the real sidecar and autoscaler processes on a fleet played on loopback."""
