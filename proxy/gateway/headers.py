"""Header hygiene between client, proxy and teacher (RFC 9110 section 7.6.1)."""

from __future__ import annotations

from collections.abc import Iterable

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Never sent upstream: set again by the HTTP client, or meant for stillroom only.
_NOT_FORWARDED = frozenset({b"host", b"content-length", b"accept-encoding"})
_OWN_PREFIX = b"x-stillroom-"
# Where clients put their keys (OpenAI's, Azure's, Anthropic's): dropped for the server's.
_KEY_HEADERS = frozenset({b"authorization", b"api-key", b"x-api-key"})
# Never sent back: the server the proxy runs under (uvicorn, its date and server headers
# on) adds its own to every answer, the proxy's own (errors, student answers) included, so
# the teacher's would repeat them. The proxy's stay, not the teacher's, as nginx does by
# default: the answer comes from the proxy, and a student's then looks like the teacher's.
_NOT_RETURNED = frozenset({b"date", b"server"})

RawHeaders = list[tuple[bytes, bytes]]


def _connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    """Headers a ``Connection`` header names are hop-by-hop too."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(token.strip().lower() for token in value.split(b","))
    return tokens


def teacher_request_headers(
    client_headers: RawHeaders,
    *,
    teacher_key: str | None,
    accept_encoding: bytes | None = None,
    decoded: bool = False,
    anthropic: bool = False,
) -> RawHeaders:
    """Headers to send the teacher: the client's end-to-end headers, with its
    ``Authorization`` replaced by the server's teacher key when the server holds one
    (with ``anthropic``, the key goes as Anthropic's ``x-api-key``; the client's
    ``anthropic-version`` and ``anthropic-beta`` pass on like any other header).

    ``accept_encoding`` sets what the teacher may compress with; None lets the HTTP
    client choose (it decompresses what it asked for). With ``decoded`` the proxy sends
    the body it decompressed, so the client's ``content-encoding`` no longer holds.
    """
    dropped = HOP_BY_HOP | _NOT_FORWARDED | _connection_tokens(client_headers)
    if decoded:
        dropped |= {b"content-encoding"}
    headers: RawHeaders = []
    for name, value in client_headers:
        lower = name.lower()
        if lower in dropped or lower.startswith(_OWN_PREFIX):
            continue
        if teacher_key is not None and lower in _KEY_HEADERS:
            continue
        headers.append((lower, value))
    if teacher_key is not None and anthropic:
        headers.append((b"x-api-key", teacher_key.encode()))
    elif teacher_key is not None:
        headers.append((b"authorization", b"Bearer " + teacher_key.encode()))
    if accept_encoding is not None:
        headers.append((b"accept-encoding", accept_encoding))
    return headers


def client_response_headers(teacher_headers: RawHeaders, *, decoded: bool) -> RawHeaders:
    """Headers to send the client: the teacher's end-to-end headers (``retry-after`` and
    ``x-ratelimit-*`` included) but ``date`` and ``server``, which the proxy's server sets.
    With ``decoded`` the body was decompressed and may be re-framed, so its
    ``content-encoding`` and ``content-length`` no longer hold."""
    dropped = set(HOP_BY_HOP | _NOT_RETURNED | _connection_tokens(teacher_headers))
    if decoded:
        dropped |= {b"content-encoding", b"content-length"}
    return [(name.lower(), value) for name, value in teacher_headers if name.lower() not in dropped]
