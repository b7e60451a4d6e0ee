"""Which format a scrape gets, from the client's Accept header.

The text format to every client that accepts it (Prometheus lists OpenMetrics first but
accepts text/plain too, and */*): procmond renders it itself, fast at 10,000s of series. Only
a client that accepts nothing but OpenMetrics gets that, through prometheus_client's encoder
(3-4 times slower at 10,000 series). Both show the same samples.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.exposition import choose_encoder

from procmond.web.server import Render

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Encoder = Callable[..., bytes]  # prometheus_client's generate_latest, either format


def accepts_text(accept: str) -> bool:
    """Whether the client takes the text format. Prometheus lists OpenMetrics first but
    accepts text/plain too (and */*); procmond then answers in text, its fast path."""
    types = [part.split(";")[0].strip() for part in accept.split(",")]
    return not accept.strip() or any(t in ("text/plain", "text/*", "*/*") for t in types)


def negotiated(
    text: Callable[[], bytes | bytearray], encoded: Callable[[Encoder], bytes]
) -> Render:
    """What /metrics serves: ``text()`` to a client that accepts the text format, else
    ``encoded`` by the encoder prometheus_client chooses for the Accept header."""

    def render(accept: str) -> tuple[bytes | bytearray, str]:
        if accepts_text(accept):
            return text(), TEXT_CONTENT_TYPE
        encoder, content_type = choose_encoder(accept)
        return encoded(encoder), content_type

    return render
