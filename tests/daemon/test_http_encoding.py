"""Content-Encoding undone within the body limit (daemon.http.encoding)."""

from __future__ import annotations

import contextlib
import gzip
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.http.encoding import (
    DecodedTooLarge,
    UndecodableBody,
    UnsupportedCoding,
    decode_content,
)

LIMIT = 4096


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize(
    ("header", "encode"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("GZIP", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", raw_deflate),
        ("identity", lambda b: b),
        (None, lambda b: b),
        ("gzip, deflate", lambda b: zlib.compress(gzip.compress(b))),
    ],
    ids=["gzip", "x-gzip", "upper", "zlib", "raw-deflate", "identity", "none", "stacked"],
)
def test_gzip_and_deflate_bodies_decode_to_what_was_sent(header: str | None, encode) -> None:
    """gzip, deflate (zlib or raw), identity and stacked codings give back the original bytes."""
    body = b'{"deltas": []}' * 20
    assert decode_content(encode(body), header, LIMIT) == body


def test_several_gzip_members_decode_one_after_the_other() -> None:
    """A gzip stream of two members decodes to both parts, as RFC 1952 allows."""
    assert decode_content(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip", LIMIT) == b"abcd"


def test_a_compressed_bomb_stops_at_the_limit() -> None:
    """Some kilobytes that would inflate to 50 MB are refused once the limit is passed."""
    bomb = gzip.compress(b"\0" * 50_000_000)
    assert len(bomb) < 100_000
    with pytest.raises(DecodedTooLarge):
        decode_content(bomb, "gzip", LIMIT)


@pytest.mark.parametrize("header", ["br", "zstd", "compress", "gzip, br", "made-up"])
def test_codings_we_do_not_undo_are_undecodable(header: str) -> None:
    """br, zstd and unknown codings are refused before any decoding is tried (415 on the
    bearer-token routes)."""
    with pytest.raises(UnsupportedCoding, match="not supported"):
        decode_content(gzip.compress(b"{}"), header, LIMIT)


def test_an_unknown_coding_is_named_back_only_when_it_looks_like_one() -> None:
    """The refusal quotes a coding name, never arbitrary header text (a token put there)."""
    with pytest.raises(UnsupportedCoding, match="'br'"):
        decode_content(b"{}", "br", LIMIT)
    with pytest.raises(UnsupportedCoding) as refused:
        decode_content(b"{}", "Bearer s3cr3t-token/with spaces", LIMIT)
    assert "s3cr3t" not in str(refused.value)


@pytest.mark.parametrize(
    "data",
    [b"", b"not gzip at all", gzip.compress(b"x" * 100)[:-12], gzip.compress(b"{}") + b"junk"],
    ids=["empty", "garbage", "truncated", "trailing-junk"],
)
def test_bytes_that_are_not_gzip_are_undecodable(data: bytes) -> None:
    """Empty, garbage, truncated or trailing-junk gzip data is undecodable, never an exception
    of another kind, and not mistaken for an unsupported coding (400, not 415)."""
    with pytest.raises(UndecodableBody) as refused:
        decode_content(data, "gzip", LIMIT)
    assert not isinstance(refused.value, UnsupportedCoding)


@given(st.binary(max_size=3 * LIMIT), st.integers(min_value=1, max_value=2 * LIMIT))
def test_decoded_size_over_the_limit_is_always_refused(body: bytes, limit: int) -> None:
    """Whatever the body and limit: the body comes back whole when it fits, else DecodedTooLarge."""
    for header, encoded in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        if len(body) > limit:
            with pytest.raises(DecodedTooLarge):
                decode_content(encoded, header, limit)
        else:
            assert decode_content(encoded, header, limit) == body


@given(st.binary(max_size=300), st.sampled_from(["gzip", "deflate", "br", "gzip, gzip"]))
def test_arbitrary_bytes_never_raise_anything_else(data: bytes, header: str) -> None:
    """Any bytes under any coding decode, or raise one of the two errors the listener answers."""
    with contextlib.suppress(DecodedTooLarge, UndecodableBody):
        decode_content(data, header, LIMIT)
