"""Image reading: any file PIL opens becomes one predictable array.

Detectors see `uint8 HxWx3` RGB in the orientation a photo viewer shows, whatever the file
stores. Conversions, so that a data set mixing modes trains the same way every time:

- EXIF orientation is applied (`ImageOps.exif_transpose`); COCO boxes refer to the upright
  image, and `image_size` reports the upright size for validation.
- Grayscale (`1`, `L`) is repeated into three channels.
- Transparency (`RGBA`, `LA`, `PA`, `P` with a transparent colour) is composited on black,
  so pixels hidden by alpha never leak arbitrary colours into training.
- 16-bit grayscale (`I;16*`) is divided by 257 (65535 → 255); 32-bit integer (`I`) and
  float (`F`) images are scaled so that their maximum maps to 255 (negatives clip to 0),
  because their range is not fixed by the mode.
- Everything else (`CMYK`, `YCbCr`, `LAB`, `HSV`, `P`) goes through PIL's `convert("RGB")`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngImageFile

from ssodkit.errors import DataError

# Orientations 5..8 rotate by 90°, so the upright image has width and height swapped.
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}
_ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}


def _open(path: Path) -> Image.Image:
    """Open lazily; any failure becomes a `DataError` naming the file."""
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not an image") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image PIL can read") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot open image ({exc})") from None


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Upright `(width, height)` from the header, without decoding pixels.

    A PNG whose eXIf chunk comes after the pixel data is read as unrotated here (finding the
    chunk would need a full decode); such files are rare and `load_image` still rotates them.
    """
    path = Path(path)
    with _open(path) as img:
        width, height = img.size
        if isinstance(img, PngImageFile) and "exif" not in img.info:
            return width, height
        try:
            orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        except Exception as exc:  # PIL raises many types on broken EXIF blocks
            raise DataError(f"{path}: unreadable EXIF data ({exc})") from None
    if orientation in _TRANSPOSED_ORIENTATIONS:
        return height, width
    return width, height


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode `path` into an upright `uint8 [H, W, 3]` RGB array (see module doc)."""
    path = Path(path)
    with _open(path) as img:
        try:
            img.load()
            upright = ImageOps.exif_transpose(img)
            return _to_rgb(upright)
        except Exception as exc:  # PIL signals corrupt data with many exception types
            raise DataError(f"{path}: corrupt image ({exc})") from None


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode.startswith("I;16"):
        return _gray_to_rgb(np.asarray(img, dtype=np.float64) / 257.0)
    if mode in ("I", "F"):
        values = np.clip(np.asarray(img, dtype=np.float64), 0.0, None)
        peak = values.max(initial=0.0)
        return _gray_to_rgb(values * (255.0 / peak) if peak > 0 else values)
    if mode in ("1", "L"):
        return _gray_to_rgb(np.asarray(img.convert("L")))
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)
        return ((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8)
    return np.array(img.convert("RGB"), dtype=np.uint8)


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    gray8 = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    return np.repeat(gray8[..., None], 3, axis=2)
