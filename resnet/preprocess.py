"""Any image a user can upload -> the 32x32 tensor the network sees.

Everything that can go wrong with an upload is decided here, before a single
pixel is decoded: the byte size is read from the file system, the pixel size
from the header (``PIL.Image.open`` is lazy), and only then ``load()`` runs.
Every refusal is an ``ImageInputError`` (a ``ValueError``) whose message is a
sentence a user can act on; the app shows it as is.
"""

from __future__ import annotations

import functools
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .constants import INPUT_SIZE, MEAN, STD

# Limits on what we accept. A phone photo is ~12 MP and ~5 MB; the caps leave
# room for that and refuse decompression bombs (a 20000x20000 PNG is a few KB
# on disk but 1.2 GB of RGB once decoded).
MAX_BYTES: int = 20 * 1024 * 1024
MAX_PIXELS: int = 40_000_000
MIN_SIDE: int = 8  # below this there is nothing left to classify

FORMATS_HINT = "PNG, JPEG, WebP, GIF, BMP or TIFF"

ImageSource = Union[str, os.PathLike, bytes, bytearray, Image.Image, np.ndarray]


class ImageInputError(ValueError):
    """The upload cannot be used; the message says why in one sentence."""


@dataclass(frozen=True)
class ModelInput:
    tensor: torch.Tensor  # (1, 3, 32, 32) float32, normalised with MEAN/STD
    seen: np.ndarray  # (32, 32, 3) uint8 RGB: exactly what the network is given


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageInputError(
            f"The image is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels); "
            f"the limit is {MAX_PIXELS / 1e6:.0f} megapixels. Please upload a smaller image."
        )
    if min(width, height) < MIN_SIDE:
        raise ImageInputError(
            f"The image is only {width}x{height} pixels; it needs at least {MIN_SIDE} pixels on each side."
        )


def _open_lazily(data: io.BytesIO | str | os.PathLike) -> Image.Image:
    """Parse the header only, and refuse anything too big before decoding it."""
    try:
        # PIL's own bomb check raises at 2x Image.MAX_IMAGE_PIXELS, which anyone
        # may have set to None; ours below does not depend on that global.
        im = Image.open(data)
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "too many pixels"
        raise ImageInputError(
            f"The image has {size}; the limit is {MAX_PIXELS / 1e6:.0f} megapixels. Please upload a smaller image."
        ) from exc
    except UnidentifiedImageError as exc:
        raise ImageInputError(
            f"This file is not an image we can read. Please upload a {FORMATS_HINT} file."
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageInputError(f"This image file is damaged and cannot be read ({exc}).") from exc
    _check_size(*im.size)
    return im


def read_upload(path: str | os.PathLike) -> bytes:
    """The bytes of an uploaded file, refused with a sentence when missing, empty, too big or not a file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise ImageInputError(f"No file at {path.name}: the upload did not arrive, please try again.") from exc
    except OSError as exc:
        raise ImageInputError(f"The uploaded file cannot be read ({exc.strerror}).") from exc
    if not path.is_file():
        raise ImageInputError("The upload is not a regular file. Please upload an image file.")
    _check_bytes(size)
    return path.read_bytes()


def _check_bytes(size: int) -> None:
    if size == 0:
        raise ImageInputError("The file is empty (0 bytes). Please upload an image.")
    if size > MAX_BYTES:
        raise ImageInputError(
            f"The file is {size / 2**20:.1f} MB; the limit is {MAX_BYTES / 2**20:.0f} MB. "
            "Please upload a smaller image."
        )


def check_file(path: str | os.PathLike) -> tuple[str, tuple[int, int]]:
    """Validate an uploaded file without decoding its pixels: (format, (w, h))."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageInputError("The uploaded file cannot be read; please try again.") from exc
    _check_bytes(size)
    with _open_lazily(path) as im:
        return str(im.format), im.size


def _to_rgb(im: Image.Image, notes: list[str] | None = None) -> Image.Image:
    """Decode and convert any PIL mode to 8-bit RGB, the way a person would see it.

    Appends to ``notes`` a short sentence for each conversion a user may want
    to know about.
    """
    notes = [] if notes is None else notes
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        im.seek(0)  # an animated GIF/WebP is classified on its first frame
        notes.append(f"The image is animated ({frames} frames); the first frame is used.")
    try:
        im.load()
    except Image.DecompressionBombError as exc:
        raise ImageInputError(f"The image is too large to decode safely ({exc}).") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow says "image file is truncated" for cut-off JPEG/PNG data.
        raise ImageInputError(
            f"The image file is truncated or corrupt and cannot be decoded ({exc}). Please upload it again."
        ) from exc
    try:
        # Phone photos store their rotation in EXIF (tag 0x0112, 1 = upright).
        if im.getexif().get(0x0112, 1) != 1:
            im = ImageOps.exif_transpose(im)
            notes.append("The image was rotated as its EXIF orientation asks.")
    except Exception:  # a broken EXIF block should not cost the user the image
        pass

    mode = im.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit and float greyscale: convert("L") would clip everything above
        # 255 to white, so scale to 8 bits ourselves.
        a = np.asarray(im, dtype=np.float64)
        if mode == "F":
            top = 1.0 if a.max(initial=0.0) <= 1.0 else 255.0
        else:
            top = 65535.0 if a.max(initial=0) > 255 else 255.0
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        notes.append("The image is high-bit-depth greyscale; it was scaled to 8 bits and copied to R, G and B.")
        return Image.fromarray(np.repeat(a[..., None], 3, axis=2), "RGB")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        # Transparent pixels often hold black or garbage RGB; composite over
        # white, as a browser shows them on a white page.
        if im.getchannel("A").getextrema()[0] < 255:
            notes.append("The image has transparent areas; they are shown on white.")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    if mode in ("L", "1"):
        notes.append("The image is greyscale; the network was trained on colour images.")
    elif mode == "CMYK":
        notes.append("The image is CMYK (print colours); it was converted to RGB.")
    # CMYK (Pillow undoes Adobe's inverted CMYK JPEGs), L, 1, YCbCr, LAB, HSV.
    return im.convert("RGB")


def _from_array(a: np.ndarray, notes: list[str]) -> Image.Image:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ImageInputError(
            f"An image array must be HxW, HxWx3 or HxWx4; got shape {tuple(a.shape)}."
        )
    _check_size(a.shape[1], a.shape[0])
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageInputError("The image array holds NaN or infinite values.")
        scale = 255.0 if a.max(initial=0.0) <= 1.0 else 1.0
        a = np.clip(a * scale + 0.5, 0, 255).astype(np.uint8)
    elif a.dtype == np.uint16:
        a = (a // 257).astype(np.uint8)
    elif a.dtype != np.uint8:
        if a.min(initial=0) < 0 or a.max(initial=0) > 255:
            raise ImageInputError(f"Integer image arrays must hold 0..255; got {a.dtype} outside that range.")
        a = a.astype(np.uint8)
    mode = "L" if a.ndim == 2 else ("RGB" if a.shape[2] == 3 else "RGBA")
    return _to_rgb(Image.fromarray(np.ascontiguousarray(a), mode), notes)


def load_image(source: ImageSource) -> Image.Image:
    """A validated 8-bit RGB image from a path, raw bytes, a PIL image or an array.

    Raises ``ImageInputError`` with a sentence for the user when the input is
    not an image, is damaged, empty, too small or too large.
    """
    return load_image_with_notes(source)[0]


def load_image_with_notes(source: ImageSource) -> tuple[Image.Image, list[str]]:
    """``load_image``, plus one sentence per conversion the user may want to know about."""
    notes: list[str] = []
    return _load(source, notes), notes


def _load(source: ImageSource, notes: list[str]) -> Image.Image:
    if source is None:
        raise ImageInputError("No image given. Upload an image or pick one of the examples.")
    if isinstance(source, np.ndarray):
        return _from_array(source, notes)
    if isinstance(source, Image.Image):
        _check_size(*source.size)
        return _to_rgb(source.copy(), notes)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        _check_bytes(len(data))
    elif isinstance(source, (str, os.PathLike)):
        data = read_upload(source)
    else:
        raise ImageInputError(f"Cannot read an image from a {type(source).__name__}.")
    # Decode from memory: the file is read once, and nothing keeps it open.
    with _open_lazily(io.BytesIO(data)) as im:
        return _to_rgb(im, notes)


def decode_cifar(data: bytes) -> np.ndarray:
    """One encoded CIFAR-size image (a data set's file, an atlas entry) -> uint8 (32, 32, 3).

    Raises ValueError saying why, worded to follow "<where> is ": not a readable image, or its size.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            array = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"not a readable image ({exc})") from exc
    if array.shape != (INPUT_SIZE, INPUT_SIZE, 3):
        raise ValueError(f"{array.shape[1]}x{array.shape[0]} px; CIFAR-10 images are {INPUT_SIZE}x{INPUT_SIZE}")
    return array


def center_square(im: Image.Image) -> Image.Image:
    """The largest centred square: CIFAR objects fill a square frame, and
    squashing a wide photo would distort them more than cropping its edges."""
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return im.crop((left, top, left + side, top + side))


def to_model_input(img: Image.Image, size: int = INPUT_SIZE) -> ModelInput:
    """Centre-crop, resize to 32x32 with antialiasing, and normalise like training."""
    if img.mode != "RGB":
        img = _to_rgb(img)
    square = center_square(img)
    if square.size != (size, size):
        # Pillow's resize filters widen their support when shrinking, so a
        # 4000 px photo is properly low-pass filtered, not aliased.
        square = square.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    seen = np.asarray(square, dtype=np.uint8).copy()
    return ModelInput(tensor=normalise(images_to_pixels(seen)).contiguous(), seen=seen)


# ----- pixels <-> model input: the one place that applies the training mean/std --------------


@functools.lru_cache(maxsize=8)
def _stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: a host-to-device copy every training step would stall the CUDA stream.
    # Built outside inference mode even when first asked from inside it: a cached inference
    # tensor could never take part in a later gradient computation (FGSM, Grad-CAM).
    with torch.inference_mode(False):
        mean = torch.tensor(MEAN, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std = torch.tensor(STD, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return mean, std


def images_to_pixels(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB (H, W, 3) or (N, H, W, 3), array or tensor -> float (N, 3, H, W) on a 0..1 scale.

    The result is a permuted view of the NHWC memory, i.e. already channels_last.
    """
    batch = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    if batch.ndim == 3:
        batch = batch[None]
    return batch.permute(0, 3, 1, 2).float() / 255.0


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """0..1 RGB pixels (N, 3, H, W) -> what the network takes: standardised with the training mean/std."""
    mean, std = _stats(pixels.device)
    return (pixels - mean) / std


def denormalise(x: torch.Tensor) -> torch.Tensor:
    """The inverse of ``normalise``: model input -> 0..1 RGB pixels."""
    mean, std = _stats(x.device)
    return x * std + mean
