"""Maps into pictures: bilinear upsampling, the jet colour map and overlays on the image."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _side(size: int | tuple[int, int] | None, default: tuple[int, int]) -> tuple[int, int]:
    if size is None:
        return default
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[1]))


def upsample(cam: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a (h, w) map to ``size`` (H, W): smooth, not blocky."""
    height, width = _side(size, cam.shape)
    t = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


def jet(values: np.ndarray) -> np.ndarray:
    """The classic Grad-CAM colour map: 0 -> dark blue, 0.5 -> green/yellow, 1 -> dark red."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32)  # where R, G, B peak on a 0..4 axis
    rgb = np.clip(1.5 - np.abs(4.0 * v - centres), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def enlarge(image: np.ndarray, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """An RGB uint8 image enlarged with nearest-neighbour: its pixels stay the ones the network saw."""
    from PIL import Image

    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got {image.shape}")
    height, width = _side(size, image.shape[:2])
    base = image.astype(np.uint8)
    if base.shape[:2] != (height, width):
        base = np.asarray(Image.fromarray(base).resize((width, height), Image.Resampling.NEAREST))
    return base


def heat(cam: np.ndarray, size: int | tuple[int, int], vmax: float | None = None) -> np.ndarray:
    """A (h, w) map upsampled bilinearly to ``size`` and coloured with ``jet`` on 0..``vmax``
    (default: its own maximum): (H, W, 3) uint8, ready to blend over an image."""
    top = float(cam.max()) if vmax is None else float(vmax)
    up = upsample(cam, size)
    return jet(up / top if top > 0 else np.zeros_like(up))


def blend(base: np.ndarray, coloured: np.ndarray, opacity: float) -> np.ndarray:
    """``coloured`` over ``base`` (both (H, W, 3) uint8) at ``opacity`` in [0, 1]."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    mixed = (1.0 - opacity) * base.astype(np.float32) + opacity * coloured.astype(np.float32)
    return np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def overlay(
    image: np.ndarray,
    cam: np.ndarray,
    opacity: float = 0.5,
    vmax: float | None = None,
    size: int | tuple[int, int] | None = None,
) -> np.ndarray:
    """Blend a heat map over an RGB uint8 image; returns (H, W, 3) uint8.

    The image is enlarged with nearest-neighbour (so its pixels stay the ones
    the network saw) and the map bilinearly. The colour scale runs from 0 to
    ``vmax`` (default: the map's own maximum), so a caller can put several maps
    on one shared scale. (``enlarge``, ``heat`` and ``blend`` are its steps, for
    a caller that redraws one map at several opacities.)
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    base = enlarge(image, size)
    return blend(base, heat(cam, base.shape[:2], vmax), opacity)
