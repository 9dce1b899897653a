"""Grad-CAM at every stage computed by Captum itself: the reference ``GradCamPass`` is held to.

Captum's ``LayerGradCam`` accepts a layer whose output is a tuple and returns
one map per tensor: ``_Trunk`` is such a layer (layer1..layer4) and
``_ExplainNet`` runs stem -> trunk -> head. Both are built per call and only
reference the model's modules, so Captum's temporary hook never sits on the
model. Kept apart from ``insight.gradcam`` because captum imports matplotlib,
which a bare GPU box (the training path records Grad-CAM) does not have.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from resnet.model import STAGE_NAMES, ResNet

from .gradcam import check_input, check_target


class _Trunk(nn.Module):
    """layer1..layer4 as one layer whose output is the tuple of all four."""

    def __init__(self, model: ResNet) -> None:
        super().__init__()
        self.stages = nn.ModuleList(getattr(model, name) for name in STAGE_NAMES)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        # No gradient is ever needed below layer1's output, so the costliest
        # stage (full 32x32 resolution) runs without building a graph and its
        # output becomes a leaf that the later stages' graph starts from.
        with torch.no_grad():
            x = self.stages[0](x)
        x = x.requires_grad_(True)
        outs = [x]
        for stage in self.stages[1:]:
            x = stage(x)
            outs.append(x)
        return tuple(outs)


class _ExplainNet(nn.Module):
    """stem -> trunk -> head; remembers (per instance) what it computed."""

    def __init__(self, model: ResNet, target: int | None) -> None:
        super().__init__()
        self.model = model
        self.trunk = _Trunk(model)
        self.target = target
        self.kept: dict[str, Any] = {}

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            stem = self.model.forward_stem(x)
        stages = self.trunk(stem)
        logits = self.model.forward_head(stages[-1])
        self.kept.update(stem=stem, stages=stages, logits=logits)
        if self.target is None:
            # Explain the predicted class without a second forward pass: a
            # scalar per example needs no target index.
            return logits.gather(1, logits.argmax(1, keepdim=True)).squeeze(1)
        return logits


def captum_gradcam(model: ResNet, x: Tensor, target: int) -> dict[str, np.ndarray]:
    """Captum's ``LayerGradCam`` (ReLU'd) at layer1..layer4 for one image: stage -> (h, w).

    Captum accepts a layer whose output is a tuple and returns one map per
    tensor: ``_Trunk`` is such a layer and ``_ExplainNet`` runs stem -> trunk -> head.
    """
    check_input(x)
    target = check_target(target)
    # Imported here, not at module level: captum costs ~0.6 s of import (and
    # pulls in matplotlib), which neither the server's start-up nor training needs.
    from captum.attr import LayerGradCam

    net = _ExplainNet(model, target)
    with torch.inference_mode(False):
        cams = LayerGradCam(net, net.trunk).attribute(x.detach().clone(), target=target, relu_attributions=True)
    return {name: cam.detach()[0, 0].float().numpy() for name, cam in zip(STAGE_NAMES, cams)}
