"""The per-arch autoscaling controller (not built yet; see the issue tracker)."""
