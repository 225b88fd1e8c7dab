# forecaster-sidecar: builds with docker, podman and apple/container alike.
#   docker build -t forecaster-sidecar:latest .
#   container run --rm -v /var/lib/forecaster-models:/models forecaster-sidecar:latest --poll-interval 10
# BASE_IMAGE lets air-gapped builds (and the tests) use a locally built Debian base.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
WORKDIR /src
COPY pyproject.toml uv.lock README.md ./
COPY service ./service
# The optional "cacert" build secret is for builders behind a TLS-intercepting proxy; a
# normal build has none, and the secret never lands in a layer.
RUN --mount=type=secret,id=cacert,required=false \
    if [ -f /run/secrets/cacert ]; then \
        export SSL_CERT_FILE=/run/secrets/cacert PIP_CERT=/run/secrets/cacert; \
    fi; \
    python3 -m venv /opt/uv \
    && /opt/uv/bin/pip install --quiet "uv>=0.5,<1" \
    && /opt/uv/bin/uv sync --frozen --no-dev --no-editable --quiet

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="forecaster-sidecar" \
      org.opencontainers.image.description="Promotes staged model bundles atomically into /models/current, reloads the model server, exports Prometheus metrics" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/forecaster/forecaster-sidecar"
# MALLOC_ARENA_MAX=1: the pull and promotion threads would each keep a glibc arena of
# freed 1 MiB buffers; in one arena they are returned (idle RSS after a 32 MiB pull:
# 34.7 MiB with per-thread arenas, 32.0 MiB with one; docs/fleet.md).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=1 \
    MODELS_ROOT=/models
COPY --from=build /opt/venv /opt/venv
COPY sidecar/sidecar.sh /sidecar/sidecar.sh
# Non-root by number, so no passwd entry is needed; nothing is written outside /models,
# so the image runs with a read-only root filesystem.
USER 10001:10001
EXPOSE 9177
WORKDIR /models
ENTRYPOINT ["/opt/venv/bin/forecaster-sidecar"]
