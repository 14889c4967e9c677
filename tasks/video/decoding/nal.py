"""Whether a decoder can start at a keyframe packet, read from its NAL units (no decoding).

Containers flag packets as keyframes that a decoder cannot start at: an H.264 encoder with
intra refresh flags the first picture of each refresh wave, a P picture (its macroblocks are
refreshed over the next half second), and decoding from it shows grey or stale blocks.
decord jumps to such packets and returns other pictures (issue 20). An H.264 keyframe is a
clean start when it holds an IDR slice or an I (or SI) slice; HEVC and other codecs are
trusted (their leading pictures are caught by the timestamp order, `timeline.py`).

H.264 packets come length-prefixed (MP4, MOV, Matroska: the length size is in the avcC
extradata) or with Annex B start codes (TS, PS, AVI, raw).
"""

from __future__ import annotations

from collections.abc import Iterator

IDR, NON_IDR = 5, 1
I_SLICES = (2, 4)  # slice_type % 5: I, SI


def _length_size(extradata: bytes | None) -> int:
    """Bytes of each NAL length prefix (avcC), or 0 for Annex B start codes."""
    if extradata and len(extradata) > 4 and extradata[0] == 1:
        return (extradata[4] & 3) + 1
    return 0


def nal_units(data: bytes, length_size: int) -> Iterator[bytes]:
    """The NAL units of one packet."""
    if length_size:
        pos = 0
        while pos + length_size <= len(data):
            n = int.from_bytes(data[pos : pos + length_size], "big")
            pos += length_size
            yield data[pos : pos + n]
            pos += n
        return
    for unit in data.split(b"\x00\x00\x01")[1:]:
        yield unit.rstrip(b"\x00")


def _exp_golomb(bits: str, pos: int) -> tuple[int, int]:
    """One unsigned Exp-Golomb code at `pos`: (value, position after it)."""
    zeros = 0
    while pos + zeros < len(bits) and bits[pos + zeros] == "0":
        zeros += 1
    end = pos + 2 * zeros + 1
    if end > len(bits):
        raise ValueError("short slice header")
    return int(bits[pos + zeros : end], 2) - 1, end


def _h264_intra(unit: bytes) -> bool | None:
    """True for an IDR or I slice, False for another slice, None for a non-slice unit."""
    kind = unit[0] & 0x1F
    if kind == IDR:
        return True
    if kind != NON_IDR:
        return None
    body = unit[1:12].replace(b"\x00\x00\x03", b"\x00\x00")  # emulation prevention
    bits = "".join(f"{b:08b}" for b in body)
    try:
        _, pos = _exp_golomb(bits, 0)  # first_mb_in_slice
        slice_type, _ = _exp_golomb(bits, pos)
    except ValueError:
        return False
    return slice_type % 5 in I_SLICES


def starts_clean(codec: str, data: bytes, extradata: bytes | None) -> bool:
    """Whether decoding can start at this keyframe packet (see the module docstring)."""
    if codec != "h264":
        return True
    found = [_h264_intra(u) for u in nal_units(data, _length_size(extradata)) if u]
    slices = [f for f in found if f is not None]
    return bool(slices) and all(slices)
