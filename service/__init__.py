"""forecaster-sidecar: promotes staged model bundles atomically and reports on it."""

__version__ = "0.1.0"
