"""What the stages hold: the stem's and every stage's activations, and their most active channels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from resnet.model import ResNet

from .gradcam import check_input


def stage_features(model: ResNet, x: Tensor) -> dict[str, np.ndarray]:
    """The stem's and every stage's activation (C, h, w) float32 from one plain forward pass.

    What ``analyze`` keeps as ``features``, without the backward pass that only
    Grad-CAM needs.
    """
    check_input(x)
    with torch.inference_mode():
        features = model.forward_intermediates(x).features
    return {name: t[0].float().numpy() for name, t in features.items()}


@dataclass(frozen=True)
class TopChannels:
    indices: np.ndarray  # (n,) int, most active first
    maps: np.ndarray  # (n, h, w) float32
    means: np.ndarray  # (n,) float32: the ranking score


def top_channels(activation: np.ndarray, n: int) -> TopChannels:
    """The ``n`` channels of a (C, h, w) activation with the highest mean activation."""
    if activation.ndim != 3:
        raise ValueError(f"activation must be (C, h, w), got {activation.shape}")
    n = max(1, min(int(n), activation.shape[0]))
    means = activation.reshape(activation.shape[0], -1).mean(1)
    order = np.argsort(-means, kind="stable")[:n]
    return TopChannels(order, activation[order].astype(np.float32, copy=False), means[order].astype(np.float32))
