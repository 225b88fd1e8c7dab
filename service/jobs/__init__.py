"""Scheduled jobs of the sidecar."""
