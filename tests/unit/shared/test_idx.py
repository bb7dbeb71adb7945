import struct
from pathlib import Path

import pytest

from shared.idx import IdxFormatError, idx_header, read_idx
from testbed.synthetic_mnist import write_idx


def pixel_bytes(count: int) -> bytes:
    return bytes(index % 256 for index in range(count))


def idx_file(shape: list[int], payload: bytes, type_code: int = 0x08) -> bytes:
    """IDX bytes built field by field, independently of the module under test."""
    magic = bytes((0, 0, type_code, len(shape)))
    return magic + b"".join(struct.pack(">I", size) for size in shape) + payload


class TestWriteIdx:
    def test_writes_the_magic_the_big_endian_shape_and_the_payload(self, tmp_path: Path):
        path = tmp_path / "images"
        write_idx(path, [2, 3, 4], pixel_bytes(24))
        assert path.read_bytes() == idx_file([2, 3, 4], pixel_bytes(24))

    def test_header_alone_matches_the_file_start(self):
        assert idx_header([70_000]) == bytes((0, 0, 8, 1)) + (70_000).to_bytes(4, "big")

    def test_wrong_payload_size_is_refused_and_nothing_is_written(self, tmp_path: Path):
        path = tmp_path / "images"
        with pytest.raises(IdxFormatError, match="23 bytes"):
            write_idx(path, [2, 3, 4], pixel_bytes(23))
        assert not path.exists()


class TestReadIdx:
    @pytest.mark.parametrize("shape", [[5], [3, 28, 28], [2, 3, 4], [0, 28, 28]])
    def test_round_trips_what_write_idx_wrote(self, tmp_path: Path, shape):
        path = tmp_path / "data"
        size = 1
        for dimension in shape:
            size *= dimension
        write_idx(path, shape, pixel_bytes(size))
        read_shape, payload = read_idx(path.read_bytes())
        assert read_shape == shape
        assert bytes(payload) == pixel_bytes(size)

    @pytest.mark.parametrize("payload_size", [23, 25, 0])
    def test_wrong_payload_size(self, payload_size):
        with pytest.raises(IdxFormatError, match="needs 24"):
            read_idx(idx_file([2, 3, 4], pixel_bytes(payload_size)))

    @pytest.mark.parametrize(
        "raw",
        [
            b"",
            b"\x00\x00",
            b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x07",
            b"\x00\x01\x08\x01" + struct.pack(">I", 1) + b"\x07",
            idx_file([1], b"\x00\x00\x00\x07", type_code=0x0C),
            b"PK\x03\x04 not an idx file",
        ],
        ids=["empty", "short", "first-byte", "second-byte", "int32-type", "zip"],
    )
    def test_bad_magic(self, raw):
        with pytest.raises(IdxFormatError, match="not an unsigned-byte IDX file"):
            read_idx(raw)

    def test_header_cut_short_inside_the_shape(self):
        # A download cut off after the magic must be a format error, not a struct error.
        truncated = idx_file([60_000, 28, 28], b"")[:9]
        with pytest.raises(IdxFormatError):
            read_idx(truncated)
