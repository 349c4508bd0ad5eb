"""Request bodies as sent, and their `Content-Encoding` undone within a size bound.

The listener turns aiohttp's own decompression off (`build_app`): a signed body must be checked
on the bytes as sent, and aiohttp's decoder has no bound of its own on the decoded size. Routes
read the raw bytes and call `decode_content` here, which stops as soon as the decoded bytes pass
the limit, so a few kilobytes that inflate to gigabytes cost one limit's worth of work.
"""

from __future__ import annotations

import re
import zlib

__all__ = [
    "DECODABLE",
    "DecodedTooLarge",
    "UndecodableBody",
    "UnsupportedCoding",
    "content_codings",
    "decode_content",
]

# Codings we undo; br and zstd need modules outside the standard library and are refused.
DECODABLE = frozenset({"gzip", "x-gzip", "deflate"})
_IDENTITY = frozenset({"", "identity"})
_STEP = 64 * 1024
_TOKEN = re.compile(r"[a-z0-9._+-]{1,32}")


class DecodedTooLarge(ValueError):
    """The decoded body passed the limit (answered 413; nothing past the limit was produced)."""


class UndecodableBody(ValueError):
    """A coding we do not undo, or bytes that are not valid data of the named coding."""


class UnsupportedCoding(UndecodableBody):
    """A coding we do not undo (br, zstd, unknown names): the body was never looked at."""


def content_codings(header: str | None) -> list[str]:
    """The codings named by a `Content-Encoding` header, in the order they were applied."""
    if not header:
        return []
    codings = [c.strip().lower() for c in header.split(",")]
    return [c for c in codings if c not in _IDENTITY]


def decode_content(body: bytes, header: str | None, limit: int) -> bytes:
    """`body` with every coding of `header` undone (last applied first), at most `limit` bytes.

    Raises `DecodedTooLarge` as soon as a decoded size passes `limit`, and `UndecodableBody` for
    a coding other than gzip/deflate or data that is not valid for its coding.
    """
    codings = content_codings(header)
    for coding in reversed(codings):
        if coding not in DECODABLE:
            # Named back only when it looks like a coding name: the header is the caller's text.
            shown = repr(coding) if _TOKEN.fullmatch(coding) else "of this kind"
            raise UnsupportedCoding(f"Content-Encoding {shown} is not supported (gzip, deflate)")
    for coding in reversed(codings):
        body = _gunzip(body, limit) if coding != "deflate" else _inflate(body, limit)
    return body


def _gunzip(data: bytes, limit: int) -> bytes:
    # A gzip stream may hold several members one after the other (RFC 1952, section 2.2).
    out = bytearray()
    while True:
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        _run(decoder, data, out, limit, "gzip")
        data = decoder.unused_data
        if not data:
            return bytes(out)


def _inflate(data: bytes, limit: int) -> bytes:
    # HTTP's "deflate" is the zlib format (RFC 9110, section 8.4.1.2); some send raw deflate.
    out = bytearray()
    zlib_header = len(data) >= 2 and data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0
    wbits = zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS
    decoder = zlib.decompressobj(wbits)
    _run(decoder, data, out, limit, "deflate")
    if decoder.unused_data:
        raise UndecodableBody("deflate: data after the end of the stream")
    return bytes(out)


def _run(decoder: zlib._Decompress, data: bytes, out: bytearray, limit: int, name: str) -> None:
    """Feed `data` to `decoder`, never asking for more output than one byte past `limit`."""
    try:
        pending = data
        while True:
            room = limit - len(out) + 1
            chunk = decoder.decompress(pending, min(room, _STEP))
            out += chunk
            if len(out) > limit:
                raise DecodedTooLarge(f"decoded body is over the limit of {limit} bytes")
            pending = decoder.unconsumed_tail
            if not pending and (decoder.eof or not chunk):
                break
        if not decoder.eof:
            raise UndecodableBody(f"{name}: the compressed data ends early")
    except zlib.error as exc:
        raise UndecodableBody(f"{name}: {exc}") from None
