"""Sanity check of the saliency: model-parameter randomisation (Adebayo et al. 2018).

"Sanity Checks for Saliency Maps" asks whether an explanation depends on what
the model learned: re-initialise the weights, from the top of the network
down, and recompute the map. A map that barely changes (high rank correlation
with the trained one) is explaining the architecture or the image, not the
model.

We re-initialise the *stages* (layer4, then layer3, ...) and keep the fc layer
trained. Adebayo et al. cascade from the logits down; keeping fc means the
question asked of the map is "does the class evidence it finds come from what
layer4 learned", and the class the map is computed for still has its trained
read-out, so the comparison is not just two random projections of noise.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from resnet.model import STAGE_NAMES, ResNet

from .gradcam import gradcam_all_stages


class SanityError(ValueError):
    """A sanity check was asked for with an unknown stage or an unusable input."""


def randomise_stages(model: ResNet, stages: Sequence[str] = ("layer4",), seed: int = 0) -> ResNet:
    """A deep copy of ``model`` with the given stages re-initialised; ``model`` is untouched.

    Convolutions get the model's own He (fan-out) initialisation from a seeded
    generator. BatchNorm gets weight 1, bias 0 and fresh running statistics
    (mean 0, var 1) - including each block's last BN, which the model zero-inits
    for training: with it at zero a "randomised" block would be the identity
    and the check would compare the trained network with itself.
    """
    unknown = [s for s in stages if s not in STAGE_NAMES]
    if unknown:
        raise SanityError(f"Unknown stage(s) {unknown}; stages are {', '.join(STAGE_NAMES)}.")
    clone = copy.deepcopy(model)
    device = next(clone.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    with torch.no_grad():
        for stage in stages:
            for module in getattr(clone, stage).modules():
                if isinstance(module, nn.Conv2d):
                    # Draw on the CPU so the same seed gives the same weights on any device.
                    w = torch.empty(module.weight.shape)
                    nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu", generator=generator)
                    module.weight.copy_(w.to(device))
                    if module.bias is not None:
                        module.bias.zero_()
                elif isinstance(module, nn.BatchNorm2d):
                    module.reset_parameters()  # weight 1, bias 0, running mean 0 / var 1
    return clone


def randomise_last_stage(model: ResNet, seed: int = 0) -> ResNet:
    """A copy of ``model`` with layer4 re-initialised (fc kept trained); see ``randomise_stages``."""
    return randomise_stages(model, ("layer4",), seed)


def rankdata(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n of the flattened ``a``, ties sharing their average rank (as scipy's default)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    order = np.argsort(a, kind="stable")
    sorted_a = a[order]
    # Each run of equal values gets the mean of the positions it spans.
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    ends = np.r_[starts[1:], len(a)]
    avg = (starts + ends - 1) / 2.0 + 1.0
    ranks = np.empty(len(a))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the flattened arrays; NaN if either is constant."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise SanityError(f"Cannot correlate maps of {a.size} and {b.size} values.")
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (average ranks for ties); NaN if either is constant.

    A constant map (e.g. a Grad-CAM the ReLU zeroed everywhere) has no ranking,
    so the correlation is undefined rather than 0.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.size != b.size:
        raise SanityError(f"Cannot correlate maps of {a.size} and {b.size} values.")
    if a.size < 2:
        return float("nan")
    return pearson(rankdata(a), rankdata(b))


def top_overlap(a: np.ndarray, b: np.ndarray, fraction: float = 0.2) -> float:
    """Intersection over union of the two maps' top ``fraction`` cells: do they point at the same place?"""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.size != b.size:
        raise SanityError(f"Cannot compare maps of {a.size} and {b.size} values.")
    k = max(1, int(round(fraction * a.size)))
    top_a = set(np.argsort(-a, kind="stable")[:k].tolist())
    top_b = set(np.argsort(-b, kind="stable")[:k].tolist())
    return len(top_a & top_b) / len(top_a | top_b)


def is_flat(a: np.ndarray) -> bool:
    """A map with one value everywhere (typically all zero after Grad-CAM's ReLU): it ranks nothing."""
    a = np.asarray(a)
    return a.size == 0 or bool(np.all(a == a.flat[0]))


def compare_maps(trained: dict[str, np.ndarray], randomised: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Per stage present in both: spearman, pearson, top-20% overlap, and which map (if any) is flat."""
    return {
        stage: {
            "spearman": spearman(trained[stage], randomised[stage]),
            "pearson": pearson(trained[stage], randomised[stage]),
            "top_overlap": top_overlap(trained[stage], randomised[stage]),
            "trained_flat": is_flat(trained[stage]),
            "randomised_flat": is_flat(randomised[stage]),
        }
        for stage in trained
        if stage in randomised
    }


def sanity_check(model: ResNet, x: Tensor, target: int | None = None,
                 stages: Sequence[str] = ("layer4",), seed: int = 0) -> dict[str, Any]:
    """Grad-CAM of the trained model vs copies with ``stages`` re-initialised cumulatively.

    ``stages`` is the cascade order: ("layer4",) is the one-button check;
    ("layer4", "layer3", ...) re-initialises one more stage per step, as in the
    paper. Every map is for the same class: ``target``, or the trained model's
    prediction. ``model`` is never modified.

    Returns plain data::

        {"target": int,
         "trained": {"probs": (10,) float32, "maps": {stage: (h, w) float32}},
         "steps": [{"randomised": ["layer4"], "probs": ..., "maps": {...},
                    "metrics": {stage: {"spearman", "pearson", "top_overlap"}}}, ...]}
    """
    if x.ndim != 4 or x.shape[0] != 1:
        raise SanityError(f"Expected one normalised image of shape (1, 3, H, W), got {tuple(x.shape)}.")
    if not stages:
        raise SanityError("Name at least one stage to re-initialise.")
    if len(set(stages)) != len(stages):
        raise SanityError(f"Each stage can be re-initialised once, got {list(stages)}.")
    trained = gradcam_all_stages(model, x, target)
    target = int(trained.target)
    result: dict[str, Any] = {
        "target": target,
        "trained": {"probs": np.asarray(trained.probs), "maps": dict(trained.maps)},
        "steps": [],
    }
    for i in range(len(stages)):
        # Fresh copy per step from the same seed: step k's stages match step k-1's.
        randomised_model = randomise_stages(model, stages[: i + 1], seed)
        cams = gradcam_all_stages(randomised_model, x, target)
        result["steps"].append({
            "randomised": list(stages[: i + 1]),
            "probs": np.asarray(cams.probs),
            "maps": dict(cams.maps),
            "metrics": compare_maps(trained.maps, cams.maps),
        })
        del randomised_model
    return result


def verdict(metrics: dict[str, Any], threshold: float = 0.5) -> str:
    """One sentence for the user about one stage's comparison (a ``compare_maps`` entry)."""
    rho = metrics["spearman"]
    if metrics.get("trained_flat"):
        return "The trained model's map is flat (all zero) at this layer, so there is nothing to compare."
    if metrics.get("randomised_flat"):
        return ("With randomised weights the map vanishes (all zero): nothing of the trained map survives, "
                "so it depends on what the model learned (passes the check).")
    if not np.isfinite(rho):
        return "One of the maps is flat, so the rank correlation is undefined."
    if rho <= -threshold:
        # An inverted map is not the same map: it moved with the weights, but its
        # layout is still tied to the image, which a user should hear about.
        return (f"Rank correlation {rho:+.2f}: randomising the weights inverts the map (what was hot is now cold), "
                "so it depends on what the model learned (passes the check), though its layout still follows the image.")
    if rho < threshold:
        return (f"Rank correlation {rho:+.2f}: the map changes when the weights are randomised, "
                "so it depends on what the model learned (passes the check).")
    return (f"Rank correlation {rho:+.2f}: the map survives randomised weights largely unchanged, "
            "so it reflects the architecture or the image more than the learned model.")
