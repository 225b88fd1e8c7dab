#!/bin/sh
# The seed's entry point, kept for compatibility: every argument goes to the sidecar.
#   ./sidecar/sidecar.sh --poll-interval 10
set -eu
if command -v forecaster-sidecar >/dev/null 2>&1; then
    exec forecaster-sidecar "$@"
fi
here=$(cd "$(dirname "$0")/.." && pwd)
if command -v uv >/dev/null 2>&1 && [ -f "$here/pyproject.toml" ]; then
    exec uv run --quiet --project "$here" forecaster-sidecar "$@"
fi
PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" exec python3 -m service "$@"
