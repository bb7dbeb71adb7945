"""The IDX file format MNIST ships in: a magic number, big-endian dimensions, raw uint8 data."""

import struct
from collections.abc import Sequence

UBYTE = 0x08


class IdxFormatError(ValueError):
    pass


def idx_header(shape: Sequence[int]) -> bytes:
    return struct.pack(">BBBB", 0, 0, UBYTE, len(shape)) + struct.pack(f">{len(shape)}I", *shape)


def read_idx(raw: bytes) -> tuple[list[int], memoryview]:
    """Returns the shape and a view of the uint8 payload."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != UBYTE:
        raise IdxFormatError("not an unsigned-byte IDX file")
    dims = raw[3]
    offset = 4 + 4 * dims
    if len(raw) < offset:
        # A file cut off inside its shape is a format error, not a struct.error.
        raise IdxFormatError(f"header of {len(raw)} bytes, {dims} dimensions need {offset}")
    shape = list(struct.unpack_from(f">{dims}I", raw, 4))
    payload = memoryview(raw)[offset:]
    expected = 1
    for size in shape:
        expected *= size
    if len(payload) != expected:
        raise IdxFormatError(f"payload of {len(payload)} bytes, shape {shape} needs {expected}")
    return shape, payload
