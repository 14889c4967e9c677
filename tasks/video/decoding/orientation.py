"""Pictures as a player shows them: rotated by the display matrix, in the displayed aspect.

A phone held upright records landscape pictures and a display matrix (MP4/MOV `tkhd`,
Matroska projection) saying "turn by 90 degrees"; a player turns them, and so do we: model
frames, thumbnails and clips are upright. `rotation` is FFmpeg's: the counter-clockwise
angle to turn the coded picture by (`VideoFrame.rotation`), a multiple of 90 here (other
angles are rounded to one). Non-square pixels (`sample_aspect_ratio`) are stretched to
the displayed width as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np


@dataclass(frozen=True)
class Orientation:
    """How one video's coded pictures map to what a player shows."""

    width: int  # coded
    height: int
    rotation: int = 0  # counter-clockwise degrees: 0, 90, 180 or 270
    sar: Fraction = Fraction(1)

    @property
    def turns(self) -> int:
        """Quarter turns counter-clockwise (np.rot90's k)."""
        return (self.rotation // 90) % 4

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as displayed: pixel aspect applied, then the rotation."""
        w = max(1, round(self.width * self.sar)) if self.sar > 0 else self.width
        return (self.height, w) if self.turns % 2 else (w, self.height)

    def coded_size(self, display: tuple[int, int]) -> tuple[int, int]:
        """The (width, height) to scale a coded picture to, so that turning it gives
        `display` (width, height)."""
        return (display[1], display[0]) if self.turns % 2 else display

    def upright(self, frames: np.ndarray) -> np.ndarray:
        """Turn coded-orientation frames (N x H x W x C, or H x W x C) as displayed."""
        if not self.turns:
            return frames
        axes = (1, 2) if frames.ndim == 4 else (0, 1)
        return np.ascontiguousarray(np.rot90(frames, self.turns, axes=axes))


def quarter_turns(angle: float | None) -> int:
    """A display-matrix angle as 0, 90, 180 or 270 counter-clockwise degrees."""
    if angle is None or not np.isfinite(angle):
        return 0
    return round(float(angle) / 90.0) % 4 * 90


def decode_size(width: int, height: int, size: int | tuple[int, int]) -> tuple[int, int]:
    """Output (width, height) for resize-on-decode of a (width, height) displayed picture.

    An int keeps the aspect ratio and makes the short side `size` (the model's preprocess
    then center-crops, as for images); a tuple is an exact `(height, width)`, like
    torchvision's `Resize`.
    """
    if isinstance(size, tuple):
        return int(size[1]), int(size[0])
    if width <= height:
        return size, max(1, round(height * size / width))
    return max(1, round(width * size / height)), size
