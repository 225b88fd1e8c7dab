"""The source check (SPEC 12): one HEAD of the reference per interval, on http.client.

It runs every SOURCE_POLL_SECONDS for the life of the sidecar, so it costs what the
standard library costs: requests and urllib3 (+5.4 MiB) are never imported, and the
client is loaded only when a new digest is downloaded (:mod:`service.oci.client`). The
connection is kept alive between checks (no TLS handshake per check); a kept connection
the registry has closed is replaced once. Each exchange is bounded in time and bytes
(:mod:`service.bounded_http`). The connection, challenge and redirects are the client's
(:mod:`service.oci.transport`), and the protocol's rules (token realms, what the answer
means) are in :mod:`service.oci.protocol`.
"""

from __future__ import annotations

from pathlib import Path

from service.oci.protocol import (
    TIMEOUT,
    Descriptor,
    Stats,
)
from service.oci.transport import Transport


class SourceCheck:
    """HEAD requests to one repository of one registry, on one kept-alive connection."""

    def __init__(
        self,
        registry: str,
        repository: str,
        *,
        insecure: frozenset[str] = frozenset(),
        auth_file: Path | None = None,
        ca_file: Path | None = None,
        timeout: tuple[float, float] = TIMEOUT,
    ) -> None:
        # No connect retry: the next check, one interval later, is the retry.
        self._transport = Transport(
            registry,
            repository,
            insecure=insecure,
            auth_file=auth_file,
            ca_file=ca_file,
            timeout=timeout,
            connect_retries=0,
        )
        self.stats: Stats = self._transport.stats

    def head_manifest(self, target: str) -> Descriptor:
        """The digest and size the tag (or digest) names now."""
        return self._transport.head_manifest(target)

    def close(self) -> None:
        self._transport.close()
