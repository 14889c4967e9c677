"""Image decoding for the model: bytes in, a preprocessed tensor or a named failure out.

This is the one place that decides what a bad image is (webdataset's lesson: one error
policy, not scattered try/except). Pixel-count limits are checked on the header, before any
pixel is decoded, so a decompression bomb never allocates its memory.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable

import torch
from PIL import Image, UnidentifiedImageError

# JPEGs much larger than the model input are decoded at a reduced DCT scale first: several
# times faster, and the bicubic resize that follows dominates the result anyway.
DRAFT_FACTOR = 4


class ImageError(ValueError):
    """An image that cannot be used; `reason` is the short label stored in the tables."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _open_checked(data: bytes, image_size: int, max_pixels: int) -> tuple[Image.Image, int, int]:
    img = Image.open(io.BytesIO(data))
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError("image_decode_error", f"bad size {w}x{h}")
    if w * h > max_pixels:
        raise ImageError("decompression_bomb", f"{w}x{h} > {max_pixels} pixels")
    if img.format == "JPEG" and min(w, h) >= DRAFT_FACTOR * image_size:
        img.draft("RGB", (2 * image_size, 2 * image_size))
    img.load()
    return img, w, h


def decode_for_model(
    data: bytes | None,
    preprocess: Callable[[Image.Image], torch.Tensor],
    image_size: int,
    max_pixels: int,
) -> tuple[torch.Tensor, int, int]:
    """Decode `data` and apply the model's preprocessing; returns (tensor, width, height).

    Raises ImageError with reason `missing_image`, `decompression_bomb`, `truncated_image`
    or `image_decode_error`; never anything else for bad bytes.
    """
    if not data:
        raise ImageError("missing_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img, w, h = _open_checked(data, image_size, max_pixels)
            if img.mode != "RGB":
                img = img.convert("RGB")
            return preprocess(img), w, h
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError("decompression_bomb", str(err)[:160]) from None
    except UnidentifiedImageError:
        raise ImageError("image_decode_error", "unidentified image format") from None
    except OSError as err:
        reason = "truncated_image" if "truncat" in str(err).lower() else "image_decode_error"
        raise ImageError(reason, str(err)[:160]) from None
    except (ValueError, SyntaxError, MemoryError, EOFError, TypeError) as err:
        raise ImageError("image_decode_error", f"{type(err).__name__}: {str(err)[:160]}") from None
