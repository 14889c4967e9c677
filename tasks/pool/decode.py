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

from tasks.errors import SampleError, is_infrastructure, short

# JPEGs much larger than the model input are decoded at a reduced DCT scale first: several
# times faster, and the bicubic resize that follows dominates the result anyway.
DRAFT_FACTOR = 4


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
    if img.format == "JPEG" and min(w, h) >= DRAFT_FACTOR * image_size:
        img.draft("RGB", (2 * image_size, 2 * image_size))
    img.load()
    return img, w, h


def decode_for_model(
    data: bytes | None,
    preprocess: Callable[[Image.Image], torch.Tensor],
    image_size: int,
    max_pixels: int,
) -> tuple[torch.Tensor, int, int, str]:
    """Decode `data` and apply the model's preprocessing.

    Returns (tensor, width, height, extension of the decoded format). Raises ImageError
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
            return preprocess(img), w, h, ext
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
