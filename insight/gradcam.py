"""Grad-CAM at every stage, and the prediction, from one forward and one backward pass.

Grad-CAM (Selvaraju et al. 2017) of class c at a stage with activation A:
ReLU(sum_k mean_hw(dy_c / dA_k) * A_k), the computation of Captum's
``LayerGradCam`` with ``relu_attributions=True``.

``GradCamPass`` runs the forward pass once and keeps its graph, so the maps of
any class at all four stages cost one backward each: the explorer answers a
new target class without running the network forward again, and the training
replay gets the predicted and the true class of a whole batch from one
forward. Below layer1's output no gradient is ever needed, so the stem and
layer1 (the costliest stage, at full 32x32 resolution) run without a graph.
The model itself never carries a hook, so concurrent requests share no
mutable state.

``insight.captum_reference.captum_gradcam`` computes the same maps with
Captum itself; the tests hold the two equal. It lives apart because captum
imports matplotlib, which the training path (the replay records Grad-CAM)
must not need.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

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


class Pass(Protocol):
    """One forward pass kept for Grad-CAM of any class: ``GradCamPass`` (autograd, any device),
    or ``insight.prepacked.PrepackedPass`` (the same results, faster on a CPU)."""

    logits: Tensor  # (N, 10), detached
    features: dict[str, Tensor]  # "stem", "layer1".."layer4" -> (N, C, h, w), detached

    @property
    def predicted(self) -> Tensor: ...

    def cams(self, targets: Tensor | Sequence[int] | int | None = None) -> dict[str, Tensor]: ...

    def cams_of_every_class(self) -> dict[str, Tensor]: ...

    def close(self) -> None: ...


def check_input(x: Tensor) -> None:
    if x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"expected one image as a (1, 3, H, W) tensor, got shape {tuple(x.shape)}")


def check_target(target: int | None) -> int | None:
    if target is None:
        return None
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) or not 0 <= int(target) < NUM_CLASSES:
        raise ValueError(f"target must be a class index 0..{NUM_CLASSES - 1} or None, got {target!r}")
    return int(target)


class GradCamPass:
    """One forward pass of a batch, kept so that Grad-CAM of any class costs one backward.

    ``x`` is a normalised (N, 3, H, W) batch. After construction: ``logits``
    (N, 10), ``features`` ("stem", "layer1".."layer4" -> (N, C, h, w)) and, if
    asked for, ``block_ratios`` (N, 16) = ||F(x)|| / ||x|| per block (about a
    tenth more time), all detached;
    ``cams(targets)`` gives the maps. ``close()`` frees the graph early; it is
    freed with the object anyway.
    """

    def __init__(self, model: ResNet, x: Tensor, block_ratios: bool = False) -> None:
        self._lock = threading.Lock()  # one backward at a time through the shared graph
        ratios: list[Tensor] = []
        stages: list[Tensor] = []
        # inference_mode(False): callers may sit inside an inference_mode block;
        # autocast off: Grad-CAM is taken in float32 whatever the caller runs in.
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
            with torch.no_grad():
                # clone: an inference-mode input becomes an ordinary tensor here
                h = stem = model.forward_stem(x.detach().clone())
            for stage in STAGE_NAMES:
                with torch.set_grad_enabled(stage != STAGE_NAMES[0]):
                    for block in getattr(model, stage):
                        if block_ratios:
                            residual, shortcut = block.residual(h), block.shortcut(h)
                            ratios.append(_norms(residual) / _norms(shortcut).clamp_min(1e-12))
                            h = block.relu3(residual + shortcut)
                        else:
                            h = block(h)
                if stage == STAGE_NAMES[0]:
                    h = h.detach().requires_grad_(True)  # the leaf the maps' graph starts from
                stages.append(h)
            self._logits = model.forward_head(h).float()
        self._stages: list[Tensor] | None = stages
        self.logits = self._logits.detach()
        self.features = {"stem": stem.detach(), **{n: a.detach() for n, a in zip(STAGE_NAMES, stages)}}
        self.block_ratios = torch.stack(ratios, 1).detach() if block_ratios else None

    @property
    def predicted(self) -> Tensor:
        return self.logits.argmax(1)

    def cams(self, targets: Tensor | Sequence[int] | int | None = None) -> dict[str, Tensor]:
        """stage -> (N, h, w) float32 >= 0: Grad-CAM of each example's target class (default: its prediction)."""
        if targets is None:
            chosen = self.predicted
        else:
            chosen = torch.as_tensor(targets, dtype=torch.long, device=self.logits.device).reshape(-1)
            if chosen.numel() == 1:
                chosen = chosen.expand(self.logits.shape[0])
        if chosen.shape != self.logits.shape[:1]:
            raise ValueError(f"need one target per image: {chosen.numel()} targets for {self.logits.shape[0]} images")
        if chosen.numel() and (int(chosen.min()) < 0 or int(chosen.max()) >= NUM_CLASSES):
            raise ValueError(f"targets must be class indices 0..{NUM_CLASSES - 1}")
        return self._backward(lambda k: torch.nn.functional.one_hot(chosen, k))

    def cams_of_every_class(self) -> dict[str, Tensor]:
        """stage -> (10, N, h, w): Grad-CAM of each class for every example, from one batched
        backward (about 0.8x the time of ten single ones on a CPU)."""
        n = self.logits.shape[0]
        # Cotangent c selects class c of every example: one vmapped backward per class.
        return self._backward(lambda k: torch.eye(k, device=self.logits.device)[:, None, :].expand(k, n, k), batched=True)

    def _backward(self, cotangent: Callable[[int], Tensor], batched: bool = False) -> dict[str, Tensor]:
        """Grad-CAM at every stage for the logits' cotangent ``cotangent(num_classes)``: (N, K), or
        (B, N, K) for ``batched`` backwards at once. Examples are independent in eval mode, so one
        backward gives every example the gradient of its own cotangent."""
        with self._lock:
            if self._stages is None:
                raise RuntimeError("this GradCamPass was closed; run a new one")
            with torch.inference_mode(False), torch.enable_grad():
                # Made here: an inference-mode tensor may not enter the backward.
                ct = cotangent(self._logits.shape[1]).to(self._logits.dtype)
                if batched:
                    grads = torch.autograd.grad(self._logits, self._stages, grad_outputs=ct, retain_graph=True,
                                                is_grads_batched=True)
                else:
                    # The same gradient as grad_outputs=ct, from a scalar: a tensor grad_outputs makes
                    # torch import sympy (half a second) on a server's first request.
                    grads = torch.autograd.grad((self._logits * ct).sum(), self._stages, retain_graph=True)
        # weights = spatial mean of the gradient per channel; map = ReLU(sum over channels of weight x activation)
        return {
            name: torch.relu((grad.mean(dim=(-2, -1), keepdim=True) * act.detach()).sum(-3)).float()
            for name, act, grad in zip(STAGE_NAMES, self._stages, grads)
        }

    def close(self) -> None:
        with self._lock:
            self._stages = None
            self._logits = self._logits.detach()


def _norms(t: Tensor) -> Tensor:
    return torch.linalg.vector_norm(t.detach().float().flatten(1), dim=1)


def analysis_of(run: Pass, target: int | None = None) -> Analysis:
    """The ``Analysis`` of the first image of a pass, for ``target`` (default: its prediction)."""
    target = check_target(target)
    logits = run.logits[0].float()
    predicted = int(logits.argmax())
    chosen = predicted if target is None else target
    cams = run.cams([chosen] * run.logits.shape[0])
    return Analysis(
        target=chosen,
        predicted=predicted,
        probs=torch.softmax(logits, 0).cpu().numpy().astype(np.float32),
        logits=logits.cpu().numpy().astype(np.float32),
        cams={name: cam[0].cpu().numpy() for name, cam in cams.items()},
        features={name: act[0].float().cpu().numpy() for name, act in run.features.items()},
    )


def analyze(model: ResNet, x: Tensor, target: int | None = None) -> Analysis:
    """Probabilities, Grad-CAM of ``target`` (default: the predicted class) at
    layer1..layer4, and the stem's and stages' activations, for one image:
    one forward and one backward pass."""
    check_input(x)
    target = check_target(target)
    run = GradCamPass(model, x)
    try:
        return analysis_of(run, target)
    finally:
        run.close()


def predict_probs(model: ResNet, x: Tensor) -> np.ndarray:
    """Softmax probabilities (10,) float32 from one plain forward pass, no gradients."""
    check_input(x)
    with torch.inference_mode():
        return torch.softmax(model(x)[0].float(), 0).numpy().astype(np.float32)


def gradcam_all_stages(model: ResNet, x: Tensor, target: int | None = None) -> GradCams:
    """Grad-CAM (ReLU'd) at layer1..layer4 from one forward + backward."""
    return analyze(model, x, target).gradcams()


def top_k(probs: np.ndarray, k: int = 5) -> dict[str, float]:
    """{class name: probability} of the k most likely classes, most likely first."""
    k = max(1, min(int(k), len(CLASSES)))
    order = np.argsort(-np.asarray(probs), kind="stable")[:k]
    return {CLASSES[i]: float(probs[i]) for i in order}
