"""A second attribution method for contrast: one that does not look inside the stages."""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import Tensor

from resnet.model import ResNet

from .gradcam import check_input, check_target

CONTRAST_METHODS: tuple[str, ...] = ("Integrated Gradients", "Occlusion")


_IMPORTING = threading.Lock()


def import_attribution_libraries() -> None:
    """Import captum (and the matplotlib it pulls in), one thread at a time; then a no-op.

    Every captum import of the explorer runs after this: two threads importing
    matplotlib at once can meet a half-initialised module (seen: a warm-up's
    first Integrated Gradients beside the first request). A server calls it in
    the background as it starts (about 0.6 s that start-up does not wait for); a
    request that needs captum before that import ends waits for it instead of
    starting its own. Here, not in ``insight/__init__``, because the training
    path must reach no captum import.
    """
    with _IMPORTING:
        import captum.attr  # noqa: F401
        import captum.robust  # noqa: F401


def contrast_map(model: ResNet, x: Tensor, target: int, method: str = "Integrated Gradients") -> np.ndarray:
    """A (32, 32) float32 map >= 0 from a method unlike Grad-CAM.

    Integrated Gradients: pixel-level path integral of input gradients from the
    dataset-mean image (zero after normalisation), |attribution| summed over RGB.
    Occlusion: how much the target logit drops when an 8x8 patch (stride 4) is
    replaced by the mean colour; only drops are kept. Neither hooks the model.
    """
    check_input(x)
    target = check_target(target)
    if target is None:
        raise ValueError("contrast_map needs a target class")
    import_attribution_libraries()
    from captum.attr import IntegratedGradients, Occlusion

    with torch.inference_mode(False):
        x = x.detach().clone()
        if method == "Integrated Gradients":
            attr = IntegratedGradients(model).attribute(
                x, baselines=torch.zeros_like(x), target=target, n_steps=16, internal_batch_size=16
            )
            out = attr[0].abs().sum(0)
        elif method == "Occlusion":
            attr = Occlusion(model).attribute(
                x,
                sliding_window_shapes=(3, 8, 8),
                strides=(3, 4, 4),
                baselines=0.0,
                target=target,
                perturbations_per_eval=64,
            )
            out = attr[0].sum(0).clamp(min=0)
        else:
            raise ValueError(f"method must be one of {CONTRAST_METHODS}, got {method!r}")
    return out.detach().float().numpy()
