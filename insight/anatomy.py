"""Inside the bottleneck blocks: out = ReLU(F(x) + x), and how large F(x) is next to x."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from resnet.model import ResNet

from .gradcam import check_input

# What each panel of the residual-block view shows, in order.
ANATOMY_PARTS: tuple[str, ...] = ("shortcut x", "F(x)", "F(x) + x", "ReLU(F(x) + x)")


@dataclass(frozen=True)
class ResidualAnatomy:
    names: list[str]  # the 16 block names, "layer1.0" .. "layer4.2"
    ratios: np.ndarray  # (16,) ||F(x)|| / ||x|| per block
    block: str  # the block whose parts are in ``maps``
    channel: int | None  # None: the maps are channel means
    channels: int  # channels of the chosen block's output
    maps: dict[str, np.ndarray]  # ANATOMY_PARTS -> (h, w) float32


def _norm(t: Tensor) -> float:
    return float(torch.linalg.vector_norm(t.float()))


def residual_anatomy(model: ResNet, x: Tensor, block: int | str = 0, channel: int | None = None) -> ResidualAnatomy:
    """Inside one bottleneck block: out = ReLU(F(x) + x), and ||F(x)|| / ||x|| for all 16.

    ``x`` is what the residual is added to: the block's input, or its 1x1
    projection in the first block of a stage where the shape changes.
    """
    check_input(x)
    with torch.inference_mode():
        _, anatomies = model.block_anatomies(x)
    names = [a.name for a in anatomies]
    if isinstance(block, (int, np.integer)) and not isinstance(block, bool):
        if not 0 <= int(block) < len(names):
            raise ValueError(f"block index must be 0..{len(names) - 1}, got {block}")
        chosen = anatomies[int(block)]
    elif block in names:
        chosen = anatomies[names.index(block)]
    else:
        raise ValueError(f"no block {block!r}; blocks are {names[0]}..{names[-1]}")
    ratios = np.array([_norm(a.residual) / max(_norm(a.shortcut), 1e-12) for a in anatomies], dtype=np.float32)
    channels = chosen.output.shape[1]
    if channel is not None and not 0 <= int(channel) < channels:
        raise ValueError(f"channel must be 0..{channels - 1} for {chosen.name}, got {channel}")
    parts = (chosen.shortcut, chosen.residual, chosen.sum, chosen.output)
    maps = {
        label: (t[0].mean(0) if channel is None else t[0, int(channel)]).float().numpy()
        for label, t in zip(ANATOMY_PARTS, parts)
    }
    return ResidualAnatomy(names, ratios, chosen.name, None if channel is None else int(channel), channels, maps)
