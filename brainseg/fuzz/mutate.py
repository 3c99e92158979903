"""Input number i of a fuzz run, made from a seed file and (target, seed, i) alone.

`make_input` picks a seed of the target's families and applies one to four mutations: bit flips,
bytes and integers set to the values parsers trip on (0, -1, 2^31 - 1, 2^31, lengths near the
file's), ranges deleted, duplicated, repeated many times or spliced from another seed, the file
cut short or grown. Positions lean towards where the structure lives: a file's first kilobyte,
PNG chunk headers, TIFF directories. Aware of the formats, it also mutates a gzip file's inflated
bytes and compresses them again (a mutation of the compressed bytes mostly makes a corrupt
stream), appends empty or garbage gzip members, and mends PNG chunk CRCs so that libpng reads
past them. Same arguments, same bytes: a failure is reproduced from three numbers.
"""

from __future__ import annotations

import gzip
import hashlib
import random
import struct
import zlib

from brainseg.fuzz.seeds import seeds

_INTERESTING = (0, 1, 2, 7, 8, 15, 16, 255, 256, 1023, 1024, 4095, 4096, 32767, 32768, 65535, 65536, 2**20, 2**24,
                2**30, 2**31 - 16, 2**31 - 1, 2**31, 2**32 - 1)


def make_input(target: str, families: tuple[str, ...], seed: int, index: int) -> bytes:
    """The `index`-th input of a run of `target` with `seed`, from the seed files of `families`."""
    digest = hashlib.sha256(f"{target}:{seed}:{index}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "little"))
    family = rng.choice(families)
    base = rng.choice(seeds(family))
    if family.endswith("_gz") and rng.random() < 0.6:
        return _mutate_gzip(rng, base, family)
    data = _mutate(rng, bytearray(base), family)
    if family == "png" and rng.random() < 0.5:
        _mend_png_crcs(data)
    return bytes(data)


def _mutate(rng: random.Random, data: bytearray, family: str) -> bytearray:
    for _ in range(rng.choice((1, 1, 2, 2, 3, 4))):
        data = rng.choice(_MUTATIONS)(rng, data, family)
    return data


def _mutate_gzip(rng: random.Random, compressed: bytes, family: str) -> bytes:
    inner = gzip.decompress(compressed)
    choice = rng.random()
    if choice < 0.6:
        return gzip.compress(bytes(_mutate(rng, bytearray(inner), family.removesuffix("_gz"))), 1, mtime=0)
    if choice < 0.75:  # many empty members after (or before) the real one
        empties = gzip.compress(b"", 1, mtime=0) * rng.choice((2, 17, 100, 5000, 5000, 200_000))
        return compressed + empties if rng.random() < 0.5 else empties + compressed
    if choice < 0.85:  # the file split into members, or followed by garbage
        cut = rng.randrange(1, len(inner))
        garbage = bytes(rng.randrange(256) for _ in range(9))
        tail = gzip.compress(inner[cut:], 1, mtime=0) if rng.random() < 0.5 else garbage
        return gzip.compress(inner[:cut], 1, mtime=0) + tail
    if choice < 0.92:  # far more inflated bytes than the header declares
        return gzip.compress(inner + bytes(rng.choice((2**10, 2**20, 2**23))), 9, mtime=0)
    return bytes(_mutate(rng, bytearray(compressed), family))


def _position(rng: random.Random, data: bytearray, family: str) -> int:
    """Where to mutate: near the structure more often than in the pixels."""
    if not data:
        return 0
    roll = rng.random()
    if roll < 0.45:
        return rng.randrange(min(len(data), 1024 if family.startswith("nifti") else 128))
    if roll < 0.65 and family == "png":
        starts = _png_chunk_starts(data)
        if starts:
            return min(len(data) - 1, rng.choice(starts) + rng.randrange(8))
    if roll < 0.65 and family == "tiff" and len(data) >= 8:
        directory = struct.unpack_from("<I" if data[:2] == b"II" else ">I", data, 4)[0]
        if directory < len(data):
            return min(len(data) - 1, directory + rng.randrange(2 + 12 * 12))
    return rng.randrange(len(data))


def _flip_bits(rng, data, family):
    for _ in range(rng.choice((1, 1, 2, 8))):
        at = _position(rng, data, family)
        if data:
            data[at] ^= 1 << rng.randrange(8)
    return data


def _set_byte(rng, data, family):
    if data:
        data[_position(rng, data, family)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
    return data


def _set_integer(rng, data, family):
    width, order = rng.choice(((2, "little"), (2, "big"), (4, "little"), (4, "big"), (8, "little")))
    value = rng.choice(_INTERESTING + (len(data), len(data) - 1, len(data) + 1, rng.randrange(2**16)))
    if rng.random() < 0.3:
        value = -value
    value %= 2 ** (8 * width)
    at = _position(rng, data, family)
    if at + width <= len(data):
        data[at:at + width] = value.to_bytes(width, order)
    return data


def _delete(rng, data, family):
    if len(data) > 1:
        at = _position(rng, data, family)
        del data[at:at + rng.choice((1, 2, 4, 16, rng.randrange(1, len(data))))]
    return data


def _duplicate(rng, data, family):
    if data:
        at = _position(rng, data, family)
        piece = data[at:at + rng.choice((1, 4, 12, 64, 512))]
        data[at:at] = piece * rng.choice((1, 2, 16, 1000))
    return data


def _insert(rng, data, family):
    at = _position(rng, data, family)
    data[at:at] = bytes(rng.randrange(256) for _ in range(rng.choice((1, 4, 13, 100))))
    return data


def _truncate(rng, data, family):
    if len(data) > 1:
        del data[rng.randrange(1, len(data)):]
    return data


def _grow(rng, data, family):
    data += bytes(rng.choice((1, 64, 4096))) if rng.random() < 0.5 else data[-rng.randrange(1, 65):] * 8
    return data


def _splice(rng, data, family):
    other = rng.choice(seeds(rng.choice(("png", "jpeg", "tiff", "bmp", "nifti"))))
    if data and other:
        at, start = _position(rng, data, family), rng.randrange(len(other))
        data[at:at + rng.randrange(1, 64)] = other[start:start + rng.randrange(1, 64)]
    return data


_MUTATIONS = (_flip_bits, _flip_bits, _set_byte, _set_integer, _set_integer, _set_integer, _delete, _duplicate,
              _insert, _truncate, _grow, _splice)


def _png_chunk_starts(data: bytearray) -> list[int]:
    """Where the chunks of a PNG start, as far as their lengths can be followed."""
    starts, at = [], 8
    while at + 12 <= len(data) and len(starts) < 64:
        starts.append(at)
        at += 12 + struct.unpack_from(">I", data, at)[0]
    return starts


def _mend_png_crcs(data: bytearray) -> None:
    """Recompute the CRC of every chunk that fits in the file, so that libpng reads the mutation."""
    for at in _png_chunk_starts(data):
        (length,) = struct.unpack_from(">I", data, at)
        end = at + 8 + length
        if end + 4 > len(data):
            return
        data[end:end + 4] = struct.pack(">I", zlib.crc32(bytes(data[at + 4:end])))
