"""The pictures inside a moov-less MP4's media data (`mdat`), found without an index.

A recorder writes the index (`moov`) last, so a power cut leaves `ftyp` + a cut `mdat`.
The media data is a run of chunks: some video pictures, then some audio frames, then
video again. A picture is an access unit: NAL units, each with a big-endian length prefix
(the size comes from the reference's avcC), together one picture (7.4.1.2.3). We walk the
data NAL by NAL; where the bytes stop being NAL units of this stream (an audio chunk), we
search forward for the next position where a picture of this stream starts.

What makes a position a picture (and not audio bytes that happen to look like one):

- every NAL unit header plausible (forbidden bit, reference flag legal for its type) and
  every length inside the data;
- an access unit delimiter first when every picture before began with one (a recorder
  writes every picture the same way);
- its first slice starts at macroblock 0 and names a known parameter set, further slices
  continue the same picture;
- its frame number continues the previous picture's (7.4.3: the previous reference
  picture's + 1), or it is an IDR picture with frame number 0, or the picture after it
  continues it (resynchronising after a lost picture).

A picture cut by the end of the file is dropped, as is anything before the first
picture a decoder can start at.
"""

from __future__ import annotations

import struct
from collections import ChainMap, Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from tasks.video.recovery.h264 import (
    AUD,
    FILLER,
    IDR,
    PPS,
    SEI,
    SLICE,
    SPS,
    Pps,
    Slice,
    Sps,
    header,
    is_intra,
    parse_pps,
    parse_slice,
    parse_sps,
)

LEADING = frozenset({AUD, SPS, PPS, SEI})
MAX_NAL = 64 << 20
WINDOW = 1 << 16  # bytes searched at once for the next picture


def top_level_boxes(
    head: bytes, size: int, read_at: Callable[[int, int], bytes]
) -> list[tuple[bytes, int, int]]:
    """(type, offset, size) of an ISO-BMFF file's top-level boxes; a box cut by the end of
    the file is listed with the size its header claims. `read_at(offset, n)` reads bytes."""
    boxes: list[tuple[bytes, int, int]] = []
    pos = 0
    while pos + 8 <= size and len(boxes) < 1000:
        raw = head[pos : pos + 16] if pos + 16 <= len(head) else read_at(pos, 16)
        n, kind = struct.unpack(">I4s", raw[:8])
        if n == 1 and len(raw) >= 16:
            n = struct.unpack(">Q", raw[8:16])[0]
        elif n == 0:
            n = size - pos
        if n < 8 or not kind.isascii():
            break
        boxes.append((kind, pos, n))
        pos += n
    return boxes


def media_region(boxes: list[tuple[bytes, int, int]], size: int) -> tuple[int, int] | None:
    """[start, end) of the first mdat's payload present in the file, when there is no moov."""
    kinds = {k for k, _, _ in boxes}
    if b"moov" in kinds or b"moof" in kinds:
        return None
    for kind, pos, n in boxes:
        if kind == b"mdat":
            return pos + 8, min(pos + n, size)  # (a 64-bit size: 8 bytes more, found as a gap)
    return None


@dataclass(frozen=True)
class Picture:
    """One access unit in the media data: bytes [start, end), its first slice."""

    start: int
    end: int
    first: Slice
    intra: bool  # every slice is intra coded: a decoder can start here
    lead: int  # the type of its first NAL unit
    frame_nums: int  # 2 ** frame_num bits of its sequence parameter set


@dataclass
class _Stream:
    data: np.ndarray  # the file's bytes (a memory map)
    end: int
    length_size: int
    sps: dict[int, Sps]
    pps: dict[int, Pps]


class Walker:
    """Pictures of a media data region ending at `end`, in order (module docstring);
    `sps`/`pps` are the reference's parameter sets (in-band ones join them)."""

    def __init__(
        self,
        data: np.ndarray,
        end: int,
        length_size: int,
        sps: dict[int, Sps],
        pps: dict[int, Pps],
    ) -> None:
        self.s = _Stream(data, end, length_size, dict(sps), dict(pps))
        self.leads: Counter[int] = Counter()
        self.prev: Slice | None = None
        self.prev_ref_frame_num: int | None = None
        self.skipped = 0  # bytes that were not pictures of this stream (audio, garbage)

    def _nal(self, pos: int) -> tuple[int, int, int] | None:
        """(type, payload start, end) of a plausible NAL unit at `pos`, else None."""
        ls, data = self.s.length_size, self.s.data
        if pos + ls + 1 > self.s.end:
            return None
        n = int.from_bytes(bytes(data[pos : pos + ls]), "big")
        if not 1 <= n <= MAX_NAL or pos + ls + n > self.s.end:
            return None
        parsed = header(int(data[pos + ls]))
        return None if parsed is None else (parsed[1], pos + ls, pos + ls + n)

    def read(self, pos: int) -> Picture | None:
        """The access unit starting at `pos`, or None when none starts there."""
        sps, pps = ChainMap({}, self.s.sps), ChainMap({}, self.s.pps)
        slices: list[Slice] = []
        lead, p = None, pos
        while (nal := self._nal(p)) is not None:
            kind, a, b = nal
            body = bytes(self.s.data[a : min(b, a + 64)])
            if kind in (SLICE, IDR):
                try:
                    s = parse_slice(body, sps, pps)
                except ValueError:
                    break
                if not slices and s.first_mb != 0:
                    return None
                if slices and not _same_picture(slices[-1], s):
                    break
                slices.append(s)
            elif kind in LEADING:
                if slices or (kind == AUD and lead is not None):
                    break
                if not _parameter_set(kind, bytes(self.s.data[a:b]), sps, pps):
                    return None
            elif kind != FILLER or not slices:  # filler data may follow the slices
                break
            lead = kind if lead is None else lead
            p = b
        if not slices:
            return None
        self._pending = (sps.maps[0], pps.maps[0])
        top = 1 << sps[pps[slices[0].pps_id].sps_id].frame_num_bits
        return Picture(pos, p, slices[0], all(is_intra(x) for x in slices), lead or SLICE, top)

    def _continues(self, pic: Picture) -> bool:
        s = pic.first
        if self.prev is None:
            return pic.intra
        if self._all_delimited() and pic.lead != AUD:
            return False
        if s.idr:
            return s.frame_num == 0
        if self.prev_ref_frame_num is None:
            return False
        after = (self.prev_ref_frame_num + 1) % pic.frame_nums
        return s.frame_num in (self.prev_ref_frame_num, after)

    def _all_delimited(self) -> bool:
        """Every picture so far (two at least) began with an access unit delimiter."""
        total = sum(self.leads.values())
        return total >= 2 and self.leads[AUD] == total

    def _accept(self, pic: Picture) -> Picture:
        sps, pps = self._pending
        self.s.sps.update(sps)
        self.s.pps.update(pps)
        self.leads[pic.lead] += 1
        self.prev = pic.first
        if pic.first.ref:
            self.prev_ref_frame_num = pic.first.frame_num
        return pic

    def _chained(self, pic: Picture) -> bool:
        """Whether the access unit right after `pic` continues it (resynchronisation)."""
        saved = (self.prev, self.prev_ref_frame_num)
        self.prev, self.prev_ref_frame_num = pic.first, pic.first.frame_num
        try:
            nxt = self.read(pic.end)
            return nxt is not None and not nxt.first.idr and self._continues(nxt)
        finally:
            self.prev, self.prev_ref_frame_num = saved

    def _valid(self, pic: Picture | None) -> bool:
        if pic is None:
            return False
        if self._continues(pic):
            return True
        pending = self._pending
        ok = self.prev is not None and self._chained(pic)
        self._pending = pending
        return ok

    def pictures(self, start: int) -> Iterator[Picture]:
        pos = start
        while pos < self.s.end:
            pic = self.read(pos)
            if self._valid(pic):
                yield self._accept(pic)
                pos = pic.end
                continue
            found = self._search(pos + 1)
            if found is None:
                self.skipped += self.s.end - pos
                return
            self.skipped += found - pos
            pos = found

    def _search(self, pos: int) -> int | None:
        """The next position after a gap where a picture of this stream starts."""
        ls, data = self.s.length_size, self.s.data
        while pos < self.s.end - ls:
            hi = min(self.s.end - ls, pos + WINDOW)
            window = data[pos : hi + ls + 1]
            head = window[ls : ls + hi - pos]
            kinds = head & 0x1F
            ok = ((head & 0x80) == 0) & np.isin(kinds, (AUD, SEI, SPS, SLICE, IDR))
            if ls >= 3:  # a NAL unit under 16 MB: the length's first byte is 0
                ok &= window[: hi - pos] == 0
            for at in np.flatnonzero(ok):
                if self._valid(self.read(pos + int(at))):
                    return pos + int(at)
            pos = hi
        return None


def _same_picture(a: Slice, b: Slice) -> bool:
    return b.first_mb > a.first_mb and (a.frame_num, a.pps_id, a.idr, a.field) == (
        b.frame_num,
        b.pps_id,
        b.idr,
        b.field,
    )


def _parameter_set(kind: int, nal: bytes, sps: ChainMap, pps: ChainMap) -> bool:
    """Take an in-band SPS/PPS into the (pending) tables; False when it does not parse."""
    try:
        if kind == SPS:
            parsed = parse_sps(nal)
            sps[parsed.sps_id] = parsed
        elif kind == PPS:
            p = parse_pps(nal)
            if p.sps_id not in sps:
                return False
            pps[p.pps_id] = p
    except ValueError:
        return False
    return True
