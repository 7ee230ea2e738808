"""Drain-aware sidecar for BuildKit builder pods."""
