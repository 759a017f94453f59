"""Decoding single image files into fixed-size uint8 arrays, and the errors bad data raises."""
from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from PIL import ExifTags, Image, ImageOps

from ..errors import BadImageError
from ..fileio import open_regular

# Extensions Pillow reads that image datasets ship in; anything else in a class folder is skipped.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)


def _to_8bit_mode(im: Image.Image, channels: int) -> Image.Image:
    """Converts any Pillow mode to 'L' (channels=1) or 'RGB' (channels=3)."""
    if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        # 16-bit grayscale: Pillow's convert('L') clips at 255 instead of scaling the range.
        wide = np.asarray(im).astype(np.int64).clip(0, 65535)
        im = Image.fromarray((wide >> 8).astype(np.uint8), mode="L")
    elif im.mode == "F":
        im = Image.fromarray(np.asarray(im).clip(0, 255).astype(np.uint8), mode="L")
    elif im.mode in ("P", "PA"):
        im = im.convert("RGBA")  # resolves the palette and its transparency
    target = "L" if channels == 1 else "RGB"
    return im if im.mode == target else im.convert(target)


def _upright(im: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: a phone photo stored sideways with an EXIF "rotate 90°" tag is
    turned upright. A damaged EXIF block is ignored (the pixels are still fine)."""
    try:
        orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - Pillow raises many types for broken metadata
        return im
    return ImageOps.exif_transpose(im) if orientation in range(2, 9) else im


def decode_image(path: str, channels: int, size: int, data: bytes | None = None) -> np.ndarray:
    """Returns the image at `path` (or its bytes `data`, already read) as a (size, size, channels) uint8 array
    (first frame of animations).

    Raises BadImageError naming the file when Pillow cannot read it.
    """
    with read_image(path, data) as im:
        return image_to_array(im, channels, size)


class _FileBytes(io.BytesIO):
    """A file's bytes, read once by the caller; Pillow's errors show it as the file's path, not as an object
    address (a different one on every run, and the message is stored with an unreadable image)."""

    def __init__(self, data: bytes, path: str):
        super().__init__(data)
        self.path = path

    def __repr__(self) -> str:
        return repr(self.path)


@contextmanager
def read_image(path: str, data: bytes | None = None) -> Iterator[Image.Image]:
    """`with read_image(path) as im:` the image at `path` (decoded from `data` when given: the file's bytes,
    read once by the caller) upright (EXIF orientation applied), as Pillow reads it (the file stays open
    inside the block). Pillow's failures inside the block, and its decompression-bomb warning, become a
    BadImageError naming the file: keep the block to the decoding."""
    try:
        with warnings.catch_warnings():
            # Pillow warns (rather than fails) on some damaged files; treat those as unreadable too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # open_regular: a FIFO or device named like an image is refused instead of blocking the run
            with _FileBytes(data, path) if data is not None else open_regular(path) as f, Image.open(f) as im:
                yield _upright(im)
    except MemoryError:
        raise BadImageError(f"cannot read image {path}: it needs more memory than is available") from None
    except BadImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types (struct.error, IndexError, ...) for bad files
        raise BadImageError(f"cannot read image {path}: {exc}") from exc


def image_to_array(im: Image.Image, channels: int, size: int) -> np.ndarray:
    """A Pillow image (any mode) as the (size, size, channels) uint8 array training sees: the mode
    converted to 'L' or 'RGB', resized bilinearly to size x size. Dataset decoding, `src.predict` (whole
    images and face crops), videos and the demo all go through here."""
    im = _to_8bit_mode(im, channels)
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8).reshape(size, size, channels)


RESIZE_CHUNK = 1024  # images resized at a time: a float copy of a whole dataset would take 4 bytes a pixel


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resizes a (N, C, H, W) uint8 batch to (N, C, size, size) with antialiased bilinear filtering, in chunks
    (each image is resized on its own, so the chunks give the same pixels as one call)."""
    if images.shape[-2:] == (size, size):
        return images
    resized = torch.empty((*images.shape[:2], size, size), dtype=torch.uint8)
    for start in range(0, len(images), RESIZE_CHUNK):
        part = F.interpolate(images[start:start + RESIZE_CHUNK].float(), size=(size, size), mode="bilinear",
                             antialias=True, align_corners=False)
        resized[start:start + RESIZE_CHUNK] = part.round_().clamp_(0, 255)
    return resized


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Converts a (N, 1|3, H, W) uint8 batch to the requested number of channels."""
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    # ITU-R 601-2 luma, the weights Pillow's convert('L') uses.
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images.float() * weights).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
