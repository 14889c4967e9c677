"""The readable prefix of a recording cut after an intact header.

A faststart MP4 (moov before mdat) or a Matroska file that is cut keeps a header promising
frames the file no longer holds. The frames before the cut are whole: they are copied
(stream copy, no decoding) into a new MP4 that says what it holds, and the pipeline reads
that copy like any other file.
"""

from __future__ import annotations

import os
from typing import Any

import av

from tasks.video.recovery.rebuild import Unrecoverable


def copy_prefix(src: str, dst: str) -> dict[str, Any]:
    """Copy the video packets of `src` that lie wholly before its end into the MP4 `dst`.

    Stops at the first packet the file cuts or the demuxer cannot read; raises
    `Unrecoverable` when no packet is left."""
    size = os.path.getsize(src)
    written = 0
    with av.open(src) as inp, av.open(dst, "w", format="mp4") as out:
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        try:
            for packet in inp.demux(stream):
                if packet.size == 0 or packet.is_discard:
                    continue
                at = packet.pos if packet.pos is not None else -1
                if packet.is_corrupt or (at >= 0 and at + packet.size > size):
                    break  # a short read at the cut, or bytes past the end
                if packet.pts is None:
                    if packet.dts is None:
                        break
                    packet.pts = packet.dts
                packet.stream = copy
                out.mux(packet)
                written += 1
        except av.FFmpegError:
            pass  # the cut: what was read before it is kept
    if written == 0:
        raise Unrecoverable("no whole frame before the cut")
    return {"frames": written}
