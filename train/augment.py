"""Batched augmentation and normalisation on the device, from uint8 NHWC images.

No per-sample Python: a batch's crops and flips are one gather with index
arithmetic, cutout is one mask, the resize for progressive resizing is one
``interpolate``. Randomness comes only from the generator passed in, so a run
is reproducible and a resumed run continues the same random stream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from resnet.constants import INPUT_SIZE
from resnet.preprocess import images_to_pixels, normalise


def normalize(images: Tensor, channels_last: bool = True) -> Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W), standardised like every model input.

    Permuting NHWC to NCHW gives a tensor whose memory already is channels_last,
    so that layout costs nothing; the classic layout needs one copy.
    """
    x = normalise(images_to_pixels(images))
    return x if channels_last else x.contiguous()


def crop_flip(images: Tensor, gen: torch.Generator, pad: int, flip: bool) -> Tensor:
    """Random 32x32 crops of the reflect-padded images, randomly mirrored; uint8 NHWC in and out.

    The padding is never materialised: the crop's row/column indices are
    reflected back into the image, and a mirror is the columns read backwards.
    """
    n, h, w, _ = images.shape
    device = images.device
    rows = torch.arange(h, device=device).expand(n, h)
    cols = torch.arange(w, device=device).expand(n, w)
    if pad:
        dy = torch.randint(-pad, pad + 1, (n, 1), device=device, generator=gen)
        dx = torch.randint(-pad, pad + 1, (n, 1), device=device, generator=gen)
        rows, cols = _reflect(rows + dy, h), _reflect(cols + dx, w)
    if flip:
        mirror = torch.rand((n, 1), device=device, generator=gen) < 0.5
        cols = torch.where(mirror, cols.flip(1), cols)
    batch = torch.arange(n, device=device)[:, None, None]
    return images[batch, rows[:, :, None], cols[:, None, :]]


def _reflect(index: Tensor, size: int) -> Tensor:
    # Reflect without repeating the edge pixel (like numpy's/torch's "reflect").
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def cutout_mask(n: int, size: int, side: int, gen: torch.Generator, device: torch.device) -> Tensor:
    """bool (N, 1, size, size), True where a side x side square (centre anywhere in the image) is cut."""
    cy = torch.randint(0, size, (n, 1, 1), device=device, generator=gen)
    cx = torch.randint(0, size, (n, 1, 1), device=device, generator=gen)
    grid = torch.arange(size, device=device)
    top, left = cy - side // 2, cx - side // 2
    inside_y = (grid[None, :, None] >= top) & (grid[None, :, None] < top + side)
    inside_x = (grid[None, None, :] >= left) & (grid[None, None, :] < left + side)
    return (inside_y & inside_x)[:, None]


def train_batch(
    images: Tensor,
    gen: torch.Generator,
    *,
    pad: int,
    flip: bool,
    cutout: int,
    resolution: int,
    channels_last: bool,
) -> Tensor:
    """uint8 NHWC images (already on the device) -> augmented, normalised float32 NCHW at ``resolution``."""
    x = crop_flip(images, gen, pad, flip)
    x = normalize(x, channels_last)
    if cutout:
        # Zero after normalising = the mean colour, which carries no signal.
        x = x.masked_fill(cutout_mask(x.shape[0], INPUT_SIZE, cutout, gen, x.device), 0.0)
    if resolution != INPUT_SIZE:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
    return x
