"""Image decoding for the model: bytes in, a preprocessed tensor or a named failure out.

This is the one place that decides what a bad image is (webdataset's lesson: one error
policy, not scattered try/except). Pixel-count limits are checked on the header, before any
pixel is decoded, so a decompression bomb never allocates its memory.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
from PIL import Image, UnidentifiedImageError

from tasks.errors import SampleError, is_infrastructure, short
from tasks.pool.phash import phash64

# JPEGs much larger than the model input are decoded at a reduced DCT scale first: several
# times faster, and the bicubic resize that follows dominates the result anyway. The reduced
# size is at least DRAFT_MIN_SIDE, so for every model with an input of 256 px or less the
# decoded pixels, and so the perceptual hash, do not depend on the model.
DRAFT_FACTOR = 2
DRAFT_MIN_SIDE = 512


def draft_side(image_size: int) -> int:
    """The smallest side a JPEG is DCT-reduced to (reduced only when twice as large)."""
    return max(DRAFT_FACTOR * image_size, DRAFT_MIN_SIDE)


# What PIL calls an image format -> the member extension it is published under. Formats
# outside this map decode, but no WebDataset reader would know what to do with them.
EXT_OF_FORMAT = {
    "JPEG": "jpg",
    "MPO": "jpg",  # camera JPEGs with extra frames: plain JPEG readers take them
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tiff",
    "AVIF": "avif",
}


class ImageError(SampleError):
    """An image that cannot be used; its `code` is the reason stored in the tables."""


def _open_checked(data: bytes, image_size: int, max_pixels: int) -> tuple[Image.Image, int, int]:
    img = Image.open(io.BytesIO(data))
    if img.format not in EXT_OF_FORMAT:
        raise ImageError("unsupported_image_format", str(img.format))
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError("image_decode_error", f"bad size {w}x{h}")
    if w * h > max_pixels:
        raise ImageError("decompression_bomb", f"{w}x{h} > {max_pixels} pixels")
    side = draft_side(image_size)
    if img.format == "JPEG" and min(w, h) >= 2 * side:
        img.draft("RGB", (side, side))
    img.load()
    return img, w, h


class Decoded(NamedTuple):
    tensor: torch.Tensor  # the model's input
    width: int
    height: int
    ext: str  # member extension of the decoded format
    phash: int  # 64-bit perceptual hash of the decoded pixels (tasks.pool.phash)


def decode_for_model(
    data: bytes | None,
    preprocess: Callable[[Image.Image], torch.Tensor],
    image_size: int,
    max_pixels: int,
) -> Decoded:
    """Decode `data` once, for the model and the perceptual hash alike.

    Raises ImageError
    with code `missing_image`, `unsupported_image_format`, `decompression_bomb`,
    `truncated_image` or `image_decode_error`; never anything else for bad bytes.
    """
    if not data:
        raise ImageError("missing_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img, w, h = _open_checked(data, image_size, max_pixels)
            ext = EXT_OF_FORMAT[str(img.format)]
            if img.mode != "RGB":
                img = img.convert("RGB")
            return Decoded(preprocess(img), w, h, ext, phash64(img))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError("decompression_bomb", short(err)) from None
    except UnidentifiedImageError:
        raise ImageError("image_decode_error", "unidentified image format") from None
    except OSError as err:
        if is_infrastructure(err):  # a full disk or dead device, not this image
            raise
        reason = "truncated_image" if "truncat" in str(err).lower() else "image_decode_error"
        raise ImageError(reason, short(err)) from None
    except (ValueError, SyntaxError, EOFError, TypeError) as err:
        raise ImageError("image_decode_error", f"{type(err).__name__}: {short(err)}") from None
