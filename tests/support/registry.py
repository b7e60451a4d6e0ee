"""A plain prometheus_client registry served by the HTTP listener, for its own tests."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from procmond.web.server import Render


def registry_render(registry: CollectorRegistry) -> Render:
    """Render a plain registry, in whatever format the client asked for."""

    def render(accept: str) -> tuple[bytes | bytearray, str]:
        encoder, content_type = choose_encoder(accept)
        return encoder(registry), content_type

    return render
