"""Byte-identical videos: same size is not enough, same bytes are; empty files are ignored."""

from __future__ import annotations

from tasks.io import storage
from tasks.video.duplicates import duplicate_videos


def test_only_same_bytes_are_copies(tmp_path):
    files = {
        "a.mp4": b"x" * 100,
        "b.mp4": b"x" * 100,  # copy of a
        "c.mp4": b"x" * 99 + b"y",  # same size, other bytes
        "d.mp4": b"z" * 50,
        "e.mp4": b"",  # empty: the probe quarantines these, never a copy
        "f.mp4": b"",
        "g.mp4": b"x" * 100,  # second copy of a
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    inputs = [storage.fingerprint(str(tmp_path / n)) for n in sorted(files)]
    got = duplicate_videos(inputs)
    first = str(tmp_path / "a.mp4")
    assert got == {str(tmp_path / "b.mp4"): first, str(tmp_path / "g.mp4"): first}
