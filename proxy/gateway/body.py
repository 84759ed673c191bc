"""Reading and parsing request bodies, with OpenAI-shaped errors for bad input.

A body may come compressed (``Content-Encoding``, RFC 9110 section 8.4): gzip and deflate
always, br and zstd where their decoders are installed. It is decoded here, in pieces, so
that a small body that decodes to gigabytes is refused once it passes the size limit,
never decoded whole.
"""

from __future__ import annotations

import functools
import http
import importlib
import importlib.util
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request

from core.errors import InvalidRequestError, PayloadTooLargeError
from core.wire import ChatCompletionRequest

# Most a decoder hands back at a time: what a body may hold in memory beyond the limit.
_PIECE = 64 * 1024

_Decoder = Callable[[bytes, int], Iterator[bytes]]  # (encoded body, limit) -> decoded pieces


class _Undecodable(Exception):
    """What a decoder raises for data that is not in its coding (or ends early)."""


async def read_body(request: Request, *, limit: int) -> bytes:
    """The whole request body, decoded as its ``content-encoding`` says, refused with 413
    as soon as it, or what it decodes to, passes ``limit`` bytes, and with 415 when it is
    encoded in a way the proxy cannot decode."""
    codings = _content_codings(request.headers.getlist("content-encoding"))
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body of {declared} bytes exceeds the {limit} limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body exceeds the {limit} byte limit")
        chunks.append(chunk)
    body = b"".join(chunks)
    for coding in reversed(codings):  # listed in the order they were applied
        body = _decoded(body, coding, limit)
    return body


def _content_codings(values: list[str]) -> list[str]:
    """The codings applied to the body, in order; 415 for one the proxy cannot decode."""
    codings = [
        coding
        for value in values
        for coding in (token.strip().lower() for token in value.split(","))
        if coding and coding != "identity"
    ]
    decoders = _decoders()
    for coding in codings:
        if coding not in decoders:
            accepted = ", ".join(name for name in decoders if not name.startswith("x-"))
            raise InvalidRequestError(
                f"the request body is encoded as '{coding}', which stillroom cannot decode; "
                f"send it uncompressed or as one of: {accepted}",
                param="content-encoding",
                code="unsupported_content_encoding",
                status_code=http.HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                # RFC 7694: a 415 for a content coding names the codings the server takes.
                headers={"accept-encoding": accepted},
            )
    return codings


def _decoded(body: bytes, coding: str, limit: int) -> bytes:
    pieces: list[bytes] = []
    size = 0
    try:
        for piece in _decoders()[coding](body, limit):
            size += len(piece)
            if size > limit:
                raise PayloadTooLargeError(
                    f"request body decoded from {coding} exceeds the {limit} byte limit"
                )
            pieces.append(piece)
    except _Undecodable as exc:
        raise InvalidRequestError(
            f"the request body is not valid {coding} data: {exc}", param="content-encoding"
        ) from exc
    return b"".join(pieces)


@functools.cache
def _decoders() -> dict[str, _Decoder]:
    """The codings this installation decodes: br and zstd only where their decoders
    happen to be installed (stillroom does not require them)."""
    decoders: dict[str, _Decoder] = {"gzip": _gunzip, "x-gzip": _gunzip, "deflate": _inflate}
    if importlib.util.find_spec("brotli") is not None:
        brotli = importlib.import_module("brotli")
        # Only brotli 1.2 and later can bound what one call decodes.
        if hasattr(brotli.Decompressor, "can_accept_more_data"):
            decoders["br"] = _unbrotli
    if importlib.util.find_spec("zstandard") is not None:
        decoders["zstd"] = _unzstd
    return decoders


def _gunzip(body: bytes, _limit: int) -> Iterator[bytes]:
    return _zlib_pieces(body, 16 + zlib.MAX_WBITS)


def _inflate(body: bytes, _limit: int) -> Iterator[bytes]:
    # HTTP's deflate is the zlib format (RFC 9110 section 8.4.1.2), but some clients send
    # a raw deflate stream without the zlib header; take both, as browsers do.
    zlib_header = len(body) >= 2 and body[0] & 0x0F == 8 and int.from_bytes(body[:2]) % 31 == 0
    return _zlib_pieces(body, zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)


def _zlib_pieces(body: bytes, wbits: int) -> Iterator[bytes]:
    while body:
        inflater = zlib.decompressobj(wbits)
        pending = body
        while not inflater.eof:
            try:
                piece = inflater.decompress(pending, _PIECE)
            except zlib.error as exc:
                raise _Undecodable(str(exc)) from exc
            pending = inflater.unconsumed_tail
            if not piece and not pending:
                raise _Undecodable("the compressed data ends early")
            yield piece
        body = inflater.unused_data  # gzip allows several members, one after another


def _unbrotli(body: bytes, _limit: int) -> Iterator[bytes]:
    brotli = importlib.import_module("brotli")
    decompressor = brotli.Decompressor()
    pending = body
    while True:
        try:
            piece: bytes = decompressor.process(pending, output_buffer_limit=_PIECE)
        except brotli.error as exc:
            raise _Undecodable(str(exc) or "invalid brotli data") from exc
        pending = b""  # given once; later calls only drain what is still buffered
        yield piece
        if decompressor.is_finished():
            return
        if decompressor.can_accept_more_data():
            raise _Undecodable("the compressed data ends early")


def _unzstd(body: bytes, limit: int) -> Iterator[bytes]:
    zstandard = importlib.import_module("zstandard")
    # A frame may ask for a window (memory held while decoding) of up to 128 MiB. One
    # larger than the limit is never needed, but zstd's own levels up to 19 use up to
    # 8 MiB whatever the size, so a small limit does not refuse their bodies.
    window = min(1 << 27, max(1 << 23, 1 << (limit - 1).bit_length()))
    decompressor = zstandard.ZstdDecompressor(max_window_size=window)
    # A body cut short inside a frame decodes to a short document, with no error from
    # the reader; the JSON parser refuses it with a 400 then.
    try:
        with decompressor.stream_reader(body, read_across_frames=True) as reader:
            while piece := reader.read(_PIECE):
                yield piece
    except zstandard.ZstdError as exc:
        raise _Undecodable(str(exc)) from exc


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise InvalidRequestError("the request body is empty; send a JSON object")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise InvalidRequestError(
            f"the request body must be a JSON object, not {type(payload).__name__}"
        )
    return payload


def parse_chat_request(payload: dict[str, Any]) -> ChatCompletionRequest:
    """Check the fields routing and capture rely on; everything else passes untouched."""
    try:
        return ChatCompletionRequest.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        raise InvalidRequestError(
            f"invalid value for '{param}': {first['msg']}" if param else first["msg"],
            param=param,
        ) from exc
