"""forecaster-sidecar: promotes staged model bundles atomically and reports on it."""

from __future__ import annotations

import functools


@functools.cache
def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("forecaster-sidecar")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> str:
    """``service.__version__`` comes from the package metadata (pyproject.toml), read on
    first use: nothing happens at import time."""
    if name == "__version__":
        return _version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
