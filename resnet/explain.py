"""Explanations of one prediction, as plain numpy data.

The central function, ``analyze``, answers everything the explorer shows for an
image with one forward and one backward pass: the class probabilities, Captum's
Grad-CAM at all four stages and the stem's and stages' activations.

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
import torch.nn.functional as F
from torch import Tensor, nn

from .constants import CLASSES, INPUT_SIZE, NUM_CLASSES
from .model import FEATURE_NAMES, STAGE_NAMES, ResNet

# What each panel of the residual-block view shows, in order.
ANATOMY_PARTS: tuple[str, ...] = ("shortcut x", "F(x)", "F(x) + x", "ReLU(F(x) + x)")
CONTRAST_METHODS: tuple[str, ...] = ("Integrated Gradients", "Occlusion")


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


def _check_input(x: Tensor) -> None:
    if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"expected one image as a (1, 3, H, W) tensor, got shape {tuple(x.shape)}")


def _check_target(target: int | None) -> int | None:
    if target is None:
        return None
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= int(target) < NUM_CLASSES:
        raise ValueError(f"target must be a class index 0..{NUM_CLASSES - 1} or None, got {target!r}")
    return int(target)


def analyze(model: ResNet, x: Tensor, target: int | None = None) -> Analysis:
    """Probabilities, Grad-CAM of ``target`` (default: the predicted class) at
    layer1..layer4, and the stem's and stages' activations, for one image."""
    _check_input(x)
    target = _check_target(target)
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


def stage_features(model: ResNet, x: Tensor) -> dict[str, np.ndarray]:
    """The stem's and every stage's activation (C, h, w) float32 from one plain forward pass.

    What ``analyze`` keeps as ``features``, without the backward pass that only
    Grad-CAM needs.
    """
    _check_input(x)
    with torch.inference_mode():
        features = model.forward_intermediates(x).features
    return {name: t[0].float().numpy() for name, t in features.items()}


def predict_probs(model: ResNet, x: Tensor) -> np.ndarray:
    """Softmax probabilities (10,) float32 from one plain forward pass, no gradients."""
    _check_input(x)
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


# ----- turning maps into pictures ------------------------------------------------------


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
    on one shared scale.
    """
    from PIL import Image

    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got {image.shape}")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    height, width = _side(size, image.shape[:2])
    base = image.astype(np.uint8)
    if base.shape[:2] != (height, width):
        base = np.asarray(Image.fromarray(base).resize((width, height), Image.Resampling.NEAREST))
    heat = upsample(cam, (height, width))
    top = float(cam.max()) if vmax is None else float(vmax)
    norm = heat / top if top > 0 else np.zeros_like(heat)
    blended = (1.0 - opacity) * base.astype(np.float32) + opacity * jet(norm).astype(np.float32)
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


# ----- feature maps and residual blocks ---------------------------------------------------


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
    _check_input(x)
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


# ----- a second attribution method for contrast ------------------------------------------


def contrast_map(model: ResNet, x: Tensor, target: int, method: str = "Integrated Gradients") -> np.ndarray:
    """A (32, 32) float32 map >= 0 from a method unlike Grad-CAM.

    Integrated Gradients: pixel-level path integral of input gradients from the
    dataset-mean image (zero after normalisation), |attribution| summed over RGB.
    Occlusion: how much the target logit drops when an 8x8 patch (stride 4) is
    replaced by the mean colour; only drops are kept. Neither hooks the model.
    """
    _check_input(x)
    target = _check_target(target)
    if target is None:
        raise ValueError("contrast_map needs a target class")
    from captum.attr import IntegratedGradients, Occlusion  # lazily, as in analyze

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


# ----- the model described by itself ----------------------------------------------------------


def architecture_table(model: ResNet, input_size: int = INPUT_SIZE) -> list[dict[str, Any]]:
    """One row per part of the network: stage, blocks, output shape, parameters.

    Shapes come from running a blank image through the model, parameters from
    counting them, so the table cannot drift from the code.
    """
    with torch.inference_mode():
        inter = model.forward_intermediates(torch.zeros(1, 3, input_size, input_size))
    info = {f.name: f for f in model.feature_info}

    def params(*modules: nn.Module) -> int:
        return sum(p.numel() for m in modules for p in m.parameters())

    rows = [
        {
            "stage": "stem",
            "blocks": 0,
            "output_shape": tuple(inter.features["stem"].shape[1:]),
            "parameters": params(model.conv1, model.bn1),
            "description": info["stem"].description,
        }
    ]
    for name in STAGE_NAMES:
        rows.append(
            {
                "stage": name,
                "blocks": len(getattr(model, name)),
                "output_shape": tuple(inter.features[name].shape[1:]),
                "parameters": params(getattr(model, name)),
                "description": info[name].description,
            }
        )
    rows.append(
        {
            "stage": "head",
            "blocks": 0,
            "output_shape": tuple(inter.logits.shape[1:]),
            "parameters": params(model.fc),
            "description": "global average pool -> fully connected",
        }
    )
    return rows


__all__ = [
    "ANATOMY_PARTS",
    "CONTRAST_METHODS",
    "FEATURE_NAMES",
    "Analysis",
    "GradCams",
    "ResidualAnatomy",
    "TopChannels",
    "analyze",
    "architecture_table",
    "contrast_map",
    "gradcam_all_stages",
    "jet",
    "overlay",
    "predict_probs",
    "residual_anatomy",
    "top_channels",
    "top_k",
    "upsample",
]
