"""Synthetic test videos made with PyAV, so video tests never depend on files outside the repo.

Every frame carries its own index as an 8-bit binary code in vertical stripes across the top
half (black/white survives lossy coding and resizing), and optionally a square that moves
across the bottom half so consecutive frames differ. `frame_code` reads the index back.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

CODE_BITS = 8


def make_frame(index: int, width: int, height: int, moving_square: bool = True) -> np.ndarray:
    """The RGB frame number `index`: its index in stripes on top, a moving square below."""
    img = np.full((height, width, 3), 96, dtype=np.uint8)
    top = height // 2
    stripe = width / CODE_BITS
    for bit in range(CODE_BITS):
        on = (index >> (CODE_BITS - 1 - bit)) & 1
        x0, x1 = round(bit * stripe), round((bit + 1) * stripe)
        img[:top, x0:x1] = 255 if on else 0
    if moving_square:
        side = max(2, height // 4)
        span = max(1, width - side)
        x = (index * 3) % span
        y = top + (height - top - side) // 2
        img[y : y + side, x : x + side] = (230, 40, 40)
    return img


def frame_code(frame: np.ndarray) -> int:
    """The index (mod 256) that `make_frame` wrote, read from a decoded, maybe resized frame."""
    height, width = frame.shape[:2]
    row = frame[height // 4].astype(np.float32).mean(axis=-1)
    code = 0
    for bit in range(CODE_BITS):
        x = int((bit + 0.5) * width / CODE_BITS)
        code = (code << 1) | int(row[x] > 128)
    return code


def make_video(
    path: str | Path,
    duration_s: float = 2.0,
    fps: float = 10,
    size: tuple[int, int] = (64, 48),
    codec: str = "libx264",
    moving_square: bool = True,
    gop: int | None = None,
    faststart: bool = False,
    container: str | None = None,
    bframes: int = 0,
    options: dict[str, str] | None = None,
) -> Path:
    """Write a video of round(duration_s * fps) frames of `make_frame`; return its path.

    `size` is (width, height); `gop` sets the keyframe interval (default: every 2 seconds);
    `faststart` moves the moov atom to the front, as streaming encoders often do;
    `bframes` > 0 lets libx264 (or libx265) use B-frames (decode order differs from display
    order); `options` go to the encoder as they are (e.g. `{"intra-refresh": "1"}`).
    """
    n_frames = round(duration_s * fps)
    return make_timed_video(
        path,
        [i / fps for i in range(n_frames)],
        size=size,
        codec=codec,
        moving_square=moving_square,
        gop=gop or max(1, round(2 * fps)),
        faststart=faststart,
        container=container,
        bframes=bframes,
        options=options,
        rate=fps,
    )


def _encoder_options(codec: str, bframes: int, gop: int) -> dict[str, str]:
    if codec == "libx264":
        preset = "veryfast" if bframes else "ultrafast"  # ultrafast turns B-frames off
        return {"preset": preset, "bframes": str(bframes)}
    if codec == "libx265":  # open GOPs by default: leading B pictures after each keyframe
        return {"x265-params": f"bframes={bframes}:keyint={gop}:log-level=error"}
    return {}


def make_timed_video(
    path: str | Path,
    times_s: list[float],
    size: tuple[int, int] = (64, 48),
    codec: str = "libx264",
    moving_square: bool = True,
    gop: int = 20,
    faststart: bool = False,
    container: str | None = None,
    bframes: int = 0,
    options: dict[str, str] | None = None,
    rate: float | None = None,
    time_base: Fraction | None = None,
    rotation: int = 0,
    pictures: list[int] | None = None,
    start_s: float = 0.0,
    audio_s: float | None = None,
) -> Path:
    """Frame i shown at `start_s + times_s[i]` on a clock of `time_base`, its picture
    `make_frame(pictures[i])` (default: i) as *displayed*: with `rotation` (counter-clockwise
    degrees, a display matrix) the coded picture is turned the other way, so an upright
    decode reads the code back. `audio_s` adds a silent AAC track of that length (from 0).
    """
    path = Path(path)
    width, height = size
    turns = (rotation // 90) % 4
    coded = (height, width) if turns % 2 else (width, height)
    if rate is None:
        rate = (len(times_s) - 1) / (times_s[-1] - times_s[0]) if len(times_s) > 1 else 10
    fraction = Fraction(rate).limit_denominator(1001)
    tb = time_base or 1 / fraction
    opts = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", format=container, options=opts) as out:
        stream = out.add_stream(codec, rate=fraction)
        stream.width, stream.height = coded
        stream.pix_fmt = "yuv420p"
        stream.gop_size = gop
        stream.codec_context.time_base = tb
        stream.options = {**_encoder_options(codec, bframes, gop), **(options or {})}
        if rotation:
            stream.set_display_rotation(rotation)
        audio = out.add_stream("aac", rate=8000) if audio_s else None
        for i, t in enumerate(times_s):
            picture = make_frame(pictures[i] if pictures else i, width, height, moving_square)
            frame = av.VideoFrame.from_ndarray(np.rot90(picture, -turns).copy(), "rgb24")
            frame.pts, frame.time_base = round((start_s + t) / tb), tb
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if audio is not None:
            _write_silence(out, audio, audio_s)
    return path


def _write_silence(
    out: av.container.OutputContainer, stream: av.AudioStream, seconds: float
) -> None:
    samples = np.zeros((1, 1024), dtype=np.float32)
    for k in range(0, round(seconds * stream.rate), 1024):
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = stream.rate, k
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def segment_times(segments: list[tuple[float, float]]) -> list[float]:
    """Frame times of a recording that runs `seconds` at `fps` for each (seconds, fps) in turn
    (a variable frame rate: phones and dashcams drop to 15 fps in low light)."""
    times: list[float] = []
    start = 0.0
    for seconds, fps in segments:
        times += [start + k / fps for k in range(round(seconds * fps))]
        start += seconds
    return times


def make_video_isolated(path: str | Path, **kwargs: object) -> Path:
    """`make_video` in a fresh interpreter, for encoders that break once decord is loaded.

    decord loads its bundled FFmpeg 4 and libvpx with RTLD_GLOBAL; PyAV's libvpx encoders
    then bind to the old libvpx and fail to open. H.264 (versioned x264 symbols) is unaffected.
    """
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]); from video_factory import make_video;"
        "make_video(sys.argv[2], **json.loads(sys.argv[3]))"
    )
    here = str(Path(__file__).resolve().parent)
    args = [sys.executable, "-c", code, here, str(path), json.dumps(kwargs)]
    subprocess.run(args, check=True, capture_output=True, timeout=120)
    return Path(path)


def make_truncated(src: str | Path, dst: str | Path, fraction: float = 0.6) -> Path:
    """Copy the first `fraction` of `src`'s bytes, like an upload cut off mid-way."""
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def make_empty(path: str | Path) -> Path:
    """A zero-byte file, as left by a failed copy."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def make_not_video(path: str | Path) -> Path:
    """A file with a video name whose content is text."""
    path = Path(path)
    path.write_text("this is not a video, just some text\n" * 20)
    return path


def make_audio_only(path: str | Path, duration_s: float = 1.0) -> Path:
    """An mp4 with a single AAC audio stream and no video stream."""
    path = Path(path)
    rate = 8000
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=rate)
        samples = np.zeros((1, 1024), dtype=np.float32)
        for k in range(int(duration_s * rate / 1024) + 1):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = k * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


CONTAINER_BOXES = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}


def _boxes(data: bytearray, start: int = 0, end: int | None = None) -> dict[bytes, int]:
    """Offsets of the payloads of the mp4 boxes we patch (first track only), by box type."""
    found: dict[bytes, int] = {}
    pos, end = start, len(data) if end is None else end
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if size < 8:
            break
        if kind in CONTAINER_BOXES:
            for k, v in _boxes(data, pos + 8, pos + size).items():
                found.setdefault(k, v)
        else:
            found.setdefault(kind, pos + 8)
        pos += size
    return found


def make_zero_fps(src: str | Path, dst: str | Path) -> Path:
    """Copy an mp4 (from `make_video`) with every frame duration and the track duration zeroed.

    Like files from recorders that write no timestamps: all frames at t=0, so no frame rate.
    """
    data = bytearray(Path(src).read_bytes())
    box = _boxes(data)
    stts, mdhd = box[b"stts"], box[b"mdhd"]
    for k in range(struct.unpack(">I", data[stts + 4 : stts + 8])[0]):
        delta = stts + 8 + 8 * k + 4
        data[delta : delta + 4] = bytes(4)
    data[mdhd + 16 : mdhd + 20] = bytes(4)  # version-0 mdhd: duration after the timescale
    Path(dst).write_bytes(data)
    return Path(dst)


def make_no_frames(src: str | Path, dst: str | Path) -> Path:
    """Copy an mp4 whose video track lists no samples (a recorder stopped before frame one)."""
    data = bytearray(Path(src).read_bytes())
    box = _boxes(data)
    stts, stsz = box[b"stts"], box[b"stsz"]
    data[stts + 4 : stts + 8] = bytes(4)  # no time-to-sample entries
    data[stsz + 8 : stsz + 12] = bytes(4)  # sample count 0
    Path(dst).write_bytes(data)
    return Path(dst)


def write_sidecar(video: str | Path, content: dict | str) -> Path:
    """Write the `.json` sidecar next to `video` (a dict as JSON, a str verbatim)."""
    path = Path(video).with_suffix(".json")
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def make_recording(
    path: str | Path,
    duration_s: float = 6.0,
    fps: float = 15,
    size: tuple[int, int] = (96, 64),
    bframes: int = 0,
    first: int = 0,
    seed: int = 0,
) -> Path:
    """A dashcam-like MP4: H.264 with noisy AAC audio interleaved in the media data (muxed
    in time order) and the moov written last; frame i shows `make_frame(first + i)`."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=rate)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        video.gop_size = round(2 * fps)
        video.codec_context.time_base = 1 / rate
        video.options = _encoder_options("libx264", bframes, video.gop_size)
        audio = out.add_stream("aac", rate=16000)
        n_video, n_audio = round(duration_s * fps), round(duration_s * 16000 / 1024)
        vi = ai = 0
        while vi < n_video or ai < n_audio:
            if vi < n_video and (ai >= n_audio or vi / fps <= ai * 1024 / 16000):
                picture = make_frame(first + vi, *size)
                frame = av.VideoFrame.from_ndarray(picture, "rgb24")
                frame.pts, frame.time_base = vi, 1 / rate
                out.mux(video.encode(frame))
                vi += 1
                continue
            noise = (rng.standard_normal((1, 1024)) * 0.3).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(noise, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, ai * 1024
            out.mux(audio.encode(frame))
            ai += 1
        out.mux(video.encode())
        out.mux(audio.encode())
    return path


def cut_at(src: str | Path, dst: str | Path, fraction: float) -> tuple[Path, int]:
    """`make_truncated`, plus how many of the video's frames lie wholly in the cut prefix."""
    src, dst = Path(src), make_truncated(src, dst, fraction)
    size = dst.stat().st_size
    with av.open(str(src)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
        whole = sum(1 for p in packets if p.pos + p.size <= size)
    return dst, whole
