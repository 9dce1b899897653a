"""Grad-CAM at every stage, and the prediction, from one forward and one backward pass.

The central function, ``analyze``, answers what the explorer's first view
shows for an image: the class probabilities, Captum's Grad-CAM at all four
stages and the stem's and stages' activations.

How: Captum's ``LayerGradCam`` accepts a layer whose output is a tuple and then
returns one map per tensor. ``_Trunk`` is such a layer (layer1..layer4, output
``(l1, l2, l3, l4)``) and ``_ExplainNet`` runs stem -> trunk -> head. Both are
built per call and only *reference* the model's modules, so Captum's temporary
forward hook sits on a per-request object: concurrent requests share no
mutable state and the model itself never carries a hook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from resnet.constants import CLASSES, NUM_CLASSES
from resnet.model import STAGE_NAMES, ResNet


@dataclass(frozen=True)
class GradCams:
    target: int  # the class the maps explain
    probs: np.ndarray  # (10,) float32 softmax
    maps: dict[str, np.ndarray]  # stage -> (h, w) float32, >= 0, at the stage's own resolution


@dataclass(frozen=True)
class Analysis:
    """Everything the explorer shows for one image, from one forward + backward."""

    target: int
    predicted: int
    probs: np.ndarray  # (10,) float32
    logits: np.ndarray  # (10,) float32
    cams: dict[str, np.ndarray]  # stage -> (h, w) float32 >= 0 (Grad-CAM with ReLU)
    features: dict[str, np.ndarray]  # "stem", "layer1".."layer4" -> (C, h, w) float32

    def top_k(self, k: int = 5) -> dict[str, float]:
        return top_k(self.probs, k)

    def gradcams(self) -> GradCams:
        return GradCams(self.target, self.probs, self.cams)


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


def check_input(x: Tensor) -> None:
    if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"expected one image as a (1, 3, H, W) tensor, got shape {tuple(x.shape)}")


def check_target(target: int | None) -> int | None:
    if target is None:
        return None
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= int(target) < NUM_CLASSES:
        raise ValueError(f"target must be a class index 0..{NUM_CLASSES - 1} or None, got {target!r}")
    return int(target)


def analyze(model: ResNet, x: Tensor, target: int | None = None) -> Analysis:
    """Probabilities, Grad-CAM of ``target`` (default: the predicted class) at
    layer1..layer4, and the stem's and stages' activations, for one image."""
    check_input(x)
    target = check_target(target)
    # Imported here, not at module level: captum costs ~0.6 s of import that
    # a plain /classify (and the server's start-up) never needs.
    from captum.attr import LayerGradCam

    net = _ExplainNet(model, target)
    # Captum turns gradients on itself; inference_mode(False) lets callers
    # use this function from inside an inference_mode block too.
    with torch.inference_mode(False):
        cams = LayerGradCam(net, net.trunk).attribute(x.detach().clone(), target=target, relu_attributions=True)
    kept = net.kept
    with torch.no_grad():
        logits = kept["logits"].detach()[0].float()
        probs = torch.softmax(logits, 0)
        predicted = int(logits.argmax())
        features = {"stem": kept["stem"].detach()[0].float().numpy()}
        for name, act in zip(STAGE_NAMES, kept["stages"]):
            features[name] = act.detach()[0].float().numpy()
    return Analysis(
        target=predicted if target is None else target,
        predicted=predicted,
        probs=probs.numpy().astype(np.float32),
        logits=logits.numpy().astype(np.float32),
        cams={name: cam.detach()[0, 0].float().numpy() for name, cam in zip(STAGE_NAMES, cams)},
        features=features,
    )


def predict_probs(model: ResNet, x: Tensor) -> np.ndarray:
    """Softmax probabilities (10,) float32 from one plain forward pass, no gradients."""
    check_input(x)
    with torch.inference_mode():
        return torch.softmax(model(x)[0].float(), 0).numpy().astype(np.float32)


def gradcam_all_stages(model: ResNet, x: Tensor, target: int | None = None) -> GradCams:
    """Captum LayerGradCam (ReLU'd) at layer1..layer4 from one forward + backward."""
    return analyze(model, x, target).gradcams()


def top_k(probs: np.ndarray, k: int = 5) -> dict[str, float]:
    """{class name: probability} of the k most likely classes, most likely first."""
    k = max(1, min(int(k), len(CLASSES)))
    order = np.argsort(-np.asarray(probs), kind="stable")[:k]
    return {CLASSES[i]: float(probs[i]) for i in order}
