"""gzip streams inflated up to a bound, in time linear in the bytes read.

A body may hold several gzip members one after another (RFC 1952 allows it, and `gzip` and
nibabel read them all). Inflating member after member by handing zlib the rest of the body each
time copies that rest once per member: a body of 200,000 empty members then costs minutes.
`inflate` feeds zlib fixed-size chunks instead, so a member costs what it holds plus one chunk,
and it refuses a stream of many members that each hold almost nothing.
"""

from __future__ import annotations

import zlib
from typing import BinaryIO

from brainseg.errors import FormatError

GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 16 * 2**10  # compressed bytes handed to zlib at a time
FREE_MEMBERS = 64  # members taken whatever they hold; beyond, they must average MEMBER_BYTES each
MEMBER_BYTES = 4096


def inflate(source: bytes | bytearray | memoryview | BinaryIO, most: int) -> bytearray:
    """Up to `most` bytes inflated from the gzip member(s) at the start of `source` (bytes, or a
    binary file read from where it stands), fewer when the stream ends first (the caller judges
    what is missing).

    Raises:
        FormatError: the stream is corrupt, or more than 64 members hold under 4 KiB each on average.
    """
    chunks = _chunks(source)
    out = bytearray()
    members = 1
    stream = zlib.decompressobj(wbits=31)
    pending = next(chunks, b"")
    try:
        while pending and len(out) < most:
            out += stream.decompress(pending, most - len(out))
            if not stream.eof:
                pending = stream.unconsumed_tail or next(chunks, b"")
                continue
            pending = stream.unused_data or next(chunks, b"")
            pending = _skip_padding(pending, chunks)
            if not pending:
                break
            members += 1
            if members > FREE_MEMBERS and len(out) < (members - FREE_MEMBERS) * MEMBER_BYTES:
                raise FormatError(f"the gzip stream's first {members} members inflate to {len(out)} bytes in all; "
                                  f"past {FREE_MEMBERS} they must average {MEMBER_BYTES} (an empty-member bomb?)")
            stream = zlib.decompressobj(wbits=31)
    except zlib.error as err:
        raise FormatError(f"the gzip stream is corrupt ({err})") from None
    return out


def _chunks(source):
    """`source` in pieces of at most CHUNK bytes (views of it when it is in memory)."""
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source)
        for start in range(0, len(view), CHUNK):
            yield view[start:start + CHUNK]
        return
    while piece := source.read(CHUNK):
        yield piece


def _skip_padding(pending, chunks):
    """The input after any zero bytes that follow a member (gzip accepts such padding at the end)."""
    while pending and pending[0] == 0:
        pending = bytes(pending).lstrip(b"\0") or next(chunks, b"")
    return pending
