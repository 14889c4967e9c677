"""Just enough of H.264's syntax to find and order pictures in a stream without a container.

A truncated MP4 has lost the index (moov) that says where each picture's bytes are and when
it shows. Its media data still holds the pictures as NAL units with length prefixes; to cut
them into pictures and to tell them from interleaved audio we read (ITU-T H.264 7.3):

- the NAL header: forbidden bit, reference flag, type;
- sequence and picture parameter sets: the frame-number width, the picture-order-count
  type and width, frame/field coding, the picture size;
- the first fields of each slice header: first macroblock, slice type, parameter set,
  frame number, IDR id, picture order count.

Nothing here decodes a picture; FFmpeg does that once the file is rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass

SLICE, IDR, SEI, SPS, PPS, AUD, END_SEQ, END_STREAM, FILLER = 1, 5, 6, 7, 8, 9, 10, 11, 12
HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})
# NAL types whose reference flag must be 0 (7.4.1), and those where it must not be
UNREFERENCED = frozenset({SEI, AUD, END_SEQ, END_STREAM, FILLER})
REFERENCED = frozenset({IDR, SPS, PPS})


class BitReader:
    """Reads bits and Exp-Golomb codes from an RBSP (emulation prevention removed)."""

    def __init__(self, payload: bytes) -> None:
        self.data = unescape(payload)
        self.pos = 0

    def bits(self, n: int) -> int:
        if n == 0:
            return 0
        if self.pos + n > 8 * len(self.data):
            raise ValueError("read past the end of a NAL unit")
        value = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3]
            value = (value << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.bits(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("Exp-Golomb code too long")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k % 2 else -(k // 2)


def unescape(payload: bytes) -> bytes:
    """RBSP of a NAL payload: every 00 00 03 becomes 00 00."""
    return payload.replace(b"\x00\x00\x03", b"\x00\x00") if b"\x00\x00\x03" in payload else payload


def header(byte: int) -> tuple[int, int] | None:
    """(nal_ref_idc, nal_unit_type) of a plausible NAL header byte, else None."""
    if byte & 0x80:
        return None
    ref, kind = (byte >> 5) & 3, byte & 0x1F
    if not 1 <= kind <= 12:
        return None
    if (kind in UNREFERENCED and ref) or (kind in REFERENCED and not ref):
        return None
    return ref, kind


@dataclass(frozen=True)
class Sps:
    sps_id: int
    frame_num_bits: int
    poc_type: int
    poc_lsb_bits: int
    frame_mbs_only: bool
    separate_colour_planes: bool
    width: int
    height: int


@dataclass(frozen=True)
class Pps:
    pps_id: int
    sps_id: int


def _skip_scaling_lists(r: BitReader, count: int) -> None:
    for i in range(count):
        if r.bits(1):
            last = nxt = 8
            for _ in range(16 if i < 6 else 64):
                if nxt:
                    nxt = (last + r.se() + 256) % 256
                last = nxt or last


def _sps_fields(r: BitReader) -> dict[str, int]:
    """An SPS's fields up to pic_width_in_mbs_minus1 (7.3.2.1.1), the reader left at
    pic_height_in_map_units_minus1."""
    profile = r.bits(8)
    r.bits(16)  # constraint flags, level
    f = {"sps_id": r.ue(), "chroma": 1, "separate": 0, "poc_lsb_bits": 0}
    if profile in HIGH_PROFILES:
        f["chroma"] = r.ue()
        if f["chroma"] == 3:
            f["separate"] = r.bits(1)
        r.ue(), r.ue(), r.bits(1)  # bit depths, transform bypass
        if r.bits(1):
            _skip_scaling_lists(r, 12 if f["chroma"] == 3 else 8)
    f["frame_num_bits"] = r.ue() + 4
    f["poc_type"] = r.ue()
    if f["poc_type"] == 0:
        f["poc_lsb_bits"] = r.ue() + 4
    elif f["poc_type"] == 1:
        r.bits(1), r.se(), r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue(), r.bits(1)  # max reference frames, gaps allowed
    f["width_mbs"] = r.ue() + 1
    return f


def parse_sps(nal: bytes) -> Sps:
    """The fields of a sequence parameter set NAL unit (header byte included) we use."""
    r = BitReader(nal[1:])
    f = _sps_fields(r)
    height_units = r.ue() + 1
    frame_mbs_only = bool(r.bits(1))
    if not frame_mbs_only:
        r.bits(1)
    r.bits(1)  # direct 8x8 inference
    crop = [r.ue() for _ in range(4)] if r.bits(1) else [0, 0, 0, 0]
    chroma, separate = f["chroma"], bool(f["separate"])
    unit_x = 2 if chroma in (1, 2) and not separate else 1
    unit_y = (2 if chroma == 1 and not separate else 1) * (1 if frame_mbs_only else 2)
    width = f["width_mbs"] * 16 - unit_x * (crop[0] + crop[1])
    height = height_units * 16 * (1 if frame_mbs_only else 2) - unit_y * (crop[2] + crop[3])
    return Sps(
        f["sps_id"],
        f["frame_num_bits"],
        f["poc_type"],
        f["poc_lsb_bits"],
        frame_mbs_only,
        separate,
        width,
        height,
    )


def parse_pps(nal: bytes) -> Pps:
    r = BitReader(nal[1:])
    return Pps(r.ue(), r.ue())


@dataclass(frozen=True)
class Slice:
    """The leading fields of one slice header."""

    idr: bool
    ref: bool  # nal_ref_idc != 0: the picture is a reference picture
    first_mb: int
    slice_type: int  # 0-4 (the header's value mod 5): P, B, I, SP, SI
    pps_id: int
    frame_num: int
    field: bool
    idr_pic_id: int
    poc_lsb: int


def parse_slice(nal: bytes, sps_of: dict[int, Sps], pps_of: dict[int, Pps]) -> Slice:
    """The leading slice header fields; `ValueError` when they cannot be a slice of this
    stream (an unknown parameter set, a slice type out of range)."""
    ref, kind = (nal[0] >> 5) & 3, nal[0] & 0x1F
    r = BitReader(nal[1:24])
    first_mb, slice_type, pps_id = r.ue(), r.ue(), r.ue()
    if slice_type > 9 or pps_id not in pps_of or pps_of[pps_id].sps_id not in sps_of:
        raise ValueError("not a slice of this stream")
    sps = sps_of[pps_of[pps_id].sps_id]
    if sps.separate_colour_planes:
        r.bits(2)
    frame_num = r.bits(sps.frame_num_bits)
    field = False
    if not sps.frame_mbs_only and r.bits(1):
        field = True
        r.bits(1)
    idr_pic_id = r.ue() if kind == IDR else 0
    poc_lsb = r.bits(sps.poc_lsb_bits) if sps.poc_type == 0 else 0
    return Slice(
        idr=kind == IDR,
        ref=ref != 0,
        first_mb=first_mb,
        slice_type=slice_type % 5,
        pps_id=pps_id,
        frame_num=frame_num,
        field=field,
        idr_pic_id=idr_pic_id,
        poc_lsb=poc_lsb,
    )


def is_intra(s: Slice) -> bool:
    return s.idr or s.slice_type in (2, 4)


@dataclass
class PocCounter:
    """Picture order counts of successive pictures (8.2.1.1, type 0; types 1-2 show
    pictures in decode order, so their count is the decode position)."""

    prev_msb: int = 0
    prev_lsb: int = 0
    decoded: int = 0

    def next(self, s: Slice, sps: Sps) -> int:
        self.decoded += 1
        if sps.poc_type != 0:
            return 2 * self.decoded
        if s.idr:
            self.prev_msb = self.prev_lsb = 0
        top = 1 << sps.poc_lsb_bits
        msb = self.prev_msb
        if s.poc_lsb < self.prev_lsb and self.prev_lsb - s.poc_lsb >= top // 2:
            msb += top
        elif s.poc_lsb > self.prev_lsb and s.poc_lsb - self.prev_lsb > top // 2:
            msb -= top
        if s.ref:
            self.prev_msb, self.prev_lsb = msb, s.poc_lsb
        return msb + s.poc_lsb


def _ue_bits(value: int) -> str:
    code = bin(value + 1)[2:]
    return "0" * (len(code) - 1) + code


def escape(rbsp: bytes) -> bytes:
    """NAL payload of an RBSP: 00 00 followed by 00-03 gets an emulation prevention 03."""
    out, zeros = bytearray(), 0
    for b in rbsp:
        if zeros >= 2 and b <= 3:
            out.append(3)
            zeros = 0
        out.append(b)
        zeros = zeros + 1 if b == 0 else 0
    return bytes(out)


def taller_sps(nal: bytes, rows: int = 1) -> bytes:
    """The same sequence parameter set with `rows` more macroblock rows (map units): a probe
    for pictures larger than a reference says (`rebuild.fits`)."""
    r = BitReader(nal[1:])
    _sps_fields(r)
    start = r.pos
    height = r.ue()
    end = r.pos
    bits = "".join(f"{b:08b}" for b in r.data)
    rest = bits[end:].rstrip("0")[:-1]  # without the RBSP stop bit and alignment
    body = bits[:start] + _ue_bits(height + rows) + rest + "1"
    body += "0" * (-len(body) % 8)
    rbsp = int(body, 2).to_bytes(len(body) // 8, "big")
    return nal[:1] + escape(rbsp)
