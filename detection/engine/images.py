"""Loading still images from paths, bytes, PIL images or arrays into BGR uint8 arrays."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import MediaError
from .media import require_nonempty_file

ImageInput = str | Path | bytes | Image.Image | np.ndarray


def load_image(source: ImageInput) -> np.ndarray:
    """Return an (H, W, 3) BGR uint8 array, whatever the input's format, mode or extension.

    Formats are recognised by content (PIL), so a PNG named .jpg or a JPEG named .mp4 loads.
    Numpy arrays follow OpenCV's convention: (H, W) grey, (H, W, 3) BGR, (H, W, 4) BGRA.
    """
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, Image.Image):
        return _from_pil(source, "image")
    if isinstance(source, (bytes, bytearray)):
        return _open_pil(io.BytesIO(source), "image bytes")
    path = require_nonempty_file(source, "image")
    return _open_pil(path, str(path))


def _open_pil(fp: Any, name: str) -> np.ndarray:
    try:
        with Image.open(fp) as im:
            im.load()
            return _from_pil(im, name)
    except UnidentifiedImageError:
        raise MediaError(f"{name}: not an image format that can be read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Truncated or corrupt data surfaces as OSError/SyntaxError from the decoders.
        raise MediaError(f"{name}: the image is corrupt or truncated ({exc})") from None
    except Image.DecompressionBombError:
        raise MediaError(f"{name}: the image is too large to decode safely") from None


def _from_pil(im: Image.Image, name: str) -> np.ndarray:
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit and float greyscale: stretch to 8 bits rather than clipping to white.
        arr = np.asarray(im, dtype=np.float64)
        top = arr.max() or 1.0
        grey = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    # Like open_clip's own `_convert_to_rgb`: alpha is dropped, palettes are expanded.
    rgb = np.asarray(im.convert("RGB"))
    if rgb.size == 0:
        raise MediaError(f"{name}: the image has no pixels")
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _from_array(arr: np.ndarray) -> np.ndarray:
    if arr.size == 0:
        raise MediaError("image array is empty")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return np.ascontiguousarray(arr[:, :, :3])
    raise MediaError(f"image array has shape {arr.shape}: expected (H, W), (H, W, 3) or (H, W, 4)")
