"""Grad-CAM at every stage on a CPU in about two thirds of autograd's time: the same
function, with the convolutions' weights laid out once and the backward pass written out.

Why it is faster, at batch 1 on a CPU (what the explorer runs):

- ``F.conv2d`` reorders each 3x3 kernel into oneDNN's blocked layout on every call, or
  takes PyTorch's im2col fallback for small inputs (everything below 20,480 values).
  Here each 3x3 kernel is reordered once, at load, and runs as one oneDNN kernel with
  its bias and ReLU fused (``torch.ops.mkldnn._convolution_pointwise``, what
  ``torch.compile`` emits on a CPU).
- A 1x1 convolution of a channels_last image is a matrix product of its (pixels x
  channels) view: one GEMM, against 1.1-3.8x the time through ``F.conv2d`` at batch 1.
- Grad-CAM differentiates activations, never weights, so the backward pass needs only
  input gradients: through ReLU the mask of its output, through a 1x1 conv a GEMM with
  the same matrix, through a 3x3 stride-1 conv a 3x3 conv with the kernel flipped and
  its channels swapped (also reordered once), through the three stride-2 ones a
  transposed conv. No graph is recorded, so there is no autograd bookkeeping either.

``PrepackedResNet`` is built from a ResNet in eval mode (BatchNorm is folded in,
``resnet.model.fuse_batchnorm``); ``PrepackedResNet.run(x)`` returns a
``PrepackedPass`` with the interface of ``insight.gradcam.Pass`` (``logits``,
``features``, ``cams``, ``cams_of_every_class``). ``insight.gradcam.GradCamPass``
(autograd) stays the reference: it runs on any device and model. A ``PassMaker``
makes a model's passes: autograd until ``choose()`` has checked the prepacked engine
on a probe image against it (logits, features and maps equal to float rounding), the
prepacked engine from then on if it agreed; ``grad_cam_passes(model)`` is a maker
that has chosen. Measured by ``bench/app_latency.py`` (the full analysis beside
autograd's and pytorch-grad-cam's) and held to autograd by ``tests/test_prepacked.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnet.constants import NUM_CLASSES
from resnet.model import STAGE_NAMES, ResNet, fuse_batchnorm

from .gradcam import GradCamPass, Pass

_MKLDNN = torch.ops.mkldnn


def _rows(x: Tensor) -> Tensor:
    """(N, C, H, W) -> (N*H*W, C): one row per pixel; a view when ``x`` is channels_last."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _image(rows: Tensor, n: int, h: int, w: int) -> Tensor:
    """The inverse of ``_rows``: a channels_last (N, C, H, W) view."""
    return rows.reshape(n, h, w, -1).permute(0, 3, 1, 2)


def _relu_backward(grad: Tensor, output: Tensor) -> Tensor:
    """The gradient through a ReLU whose output was ``output``. A batch of cotangents of one
    image broadcasts against it; for several images the saved output is repeated per cotangent."""
    if output.shape[0] not in (1, grad.shape[0]):
        output = output.repeat(grad.shape[0] // output.shape[0], 1, 1, 1)
    return torch.ops.aten.threshold_backward(grad, output, 0)


class _Pointwise:
    """A 1x1 convolution (BatchNorm folded in) as a matrix: forward ``rows @ W.T + b``, backward ``rows @ W``."""

    def __init__(self, conv: nn.Conv2d) -> None:
        self.weight = conv.weight.detach().float().reshape(conv.out_channels, conv.in_channels).contiguous()
        self.bias = _bias(conv)
        self.stride = conv.stride[0]

    def forward_rows(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride].contiguous(memory_format=torch.channels_last)
        return torch.addmm(self.bias, _rows(x), self.weight.t())

    def backward(self, grad_rows: Tensor, input_shape: tuple[int, ...]) -> Tensor:
        """(B*h*w, C_out) -> the (B*H*W, C_in) gradient of the input: zero where a stride skipped a pixel."""
        back = grad_rows @ self.weight
        if self.stride == 1:
            return back
        _, c, h, w = input_shape
        s = self.stride
        kept = back.reshape(-1, -(-h // s), -(-w // s), c)
        full = back.new_zeros(kept.shape[0], h, w, c)
        full[:, ::s, ::s, :] = kept
        return full.reshape(-1, c)


class _Spatial:
    """A 3x3 convolution (BatchNorm folded in) on kernels reordered once for oneDNN."""

    def __init__(self, conv: nn.Conv2d, side: int) -> None:
        if conv.kernel_size != (3, 3) or conv.padding != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1:
            raise NotImplementedError(f"a {conv} is not a plain 3x3 convolution with padding 1")
        weight = conv.weight.detach().float()
        self.bias = _bias(conv)
        self.stride = conv.stride[0]
        c_out, c_in = weight.shape[:2]
        # The input size is a hint for the layout oneDNN picks; other sizes still run.
        self.packed = _MKLDNN._reorder_convolution_weight(weight, [1, 1], [self.stride] * 2, [1, 1], 1,
                                                          [1, c_in, side, side])
        if self.stride == 1:
            # The input gradient of a stride-1 "same" conv is the conv with the kernel
            # rotated by 180 degrees and its input and output channels swapped.
            flipped = weight.flip(-1, -2).transpose(0, 1).contiguous()
            self.packed_back = _MKLDNN._reorder_convolution_weight(flipped, [1, 1], [1, 1], [1, 1], 1,
                                                                   [1, c_out, side, side])
        else:
            self.weight = weight  # for the transposed conv of the backward pass

    def forward(self, x: Tensor, relu: bool = True) -> Tensor:
        return _MKLDNN._convolution_pointwise(x, self.packed, self.bias, [1, 1], [self.stride] * 2, [1, 1], 1,
                                              "relu" if relu else "none", [], "")

    def backward(self, grad: Tensor, input_shape: tuple[int, ...]) -> Tensor:
        if self.stride == 1:
            return _MKLDNN._convolution_pointwise(grad, self.packed_back, None, [1, 1], [1, 1], [1, 1], 1,
                                                  "none", [], "")
        # output_padding gives back the input size that the stride rounded down
        pad = [size - ((g - 1) * self.stride - 2 + 3) for size, g in zip(input_shape[2:], grad.shape[2:])]
        return F.conv_transpose2d(grad, self.weight, stride=self.stride, padding=1, output_padding=pad)


def _bias(conv: nn.Conv2d) -> Tensor:
    return (conv.bias.detach().float() if conv.bias is not None
            else torch.zeros(conv.out_channels))


@dataclass(frozen=True)
class _Block:
    stage: str
    conv1: _Pointwise
    conv2: _Spatial
    conv3: _Pointwise
    downsample: _Pointwise | None


@dataclass(frozen=True)
class _Saved:
    """What the backward pass of one block reads: its input's shape and its three ReLUs' outputs."""

    input_shape: tuple[int, ...]
    relu1: Tensor
    relu2: Tensor
    output: Tensor


class PrepackedResNet:
    """The bottleneck ResNet with a CIFAR stem, BatchNorm folded in, as prepacked oneDNN kernels.

    ``model`` is in eval mode, with its BatchNorm layers or already folded
    (``fuse_batchnorm``); it is copied, never changed. Immutable after construction,
    so one instance serves concurrent requests. ``side`` is the input size the kernels
    are laid out for (others run too).
    """

    def __init__(self, model: ResNet, side: int = 32) -> None:
        if not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled:
            raise NotImplementedError("this build of torch has no oneDNN (mkldnn) CPU kernels")
        if getattr(model, "stem_kind", "cifar") != "cifar":
            raise NotImplementedError("only the CIFAR stem (3x3 conv, no max-pool) is prepacked")
        if model.training:
            raise NotImplementedError("a model in training mode normalises by batch statistics; call .eval()")
        has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        fused = fuse_batchnorm(model) if has_bn else model
        self.stem = _Spatial(fused.conv1, side)
        self.blocks: list[_Block] = []
        for stage in STAGE_NAMES:
            for block in getattr(fused, stage):
                if block.conv1.stride != (1, 1) or block.conv3.stride != (1, 1):
                    raise NotImplementedError("only blocks with the stride on the 3x3 conv (ResNet v1.5)")
                down = None if block.downsample is None else _Pointwise(block.downsample[0])
                self.blocks.append(_Block(stage, _Pointwise(block.conv1), _Spatial(block.conv2, side),
                                          _Pointwise(block.conv3), down))
                side = -(-side // block.conv2.stride[0])
        self.fc_weight = fused.fc.weight.detach().float().contiguous()
        self.fc_bias = fused.fc.bias.detach().float()

    def run(self, x: Tensor) -> PrepackedPass:
        return PrepackedPass(self, x)

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor], list[_Saved]]:
        """(N, 3, H, W) -> logits, the stem's and stages' outputs, and what the backward pass reads."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images as an (N, 3, H, W) tensor, got shape {tuple(x.shape)}")
        with torch.inference_mode():
            h = self.stem.forward(x.float().contiguous(memory_format=torch.channels_last))
            features = {"stem": h}
            saved: list[_Saved] = []
            for block in self.blocks:
                n, _, height, width = h.shape
                relu1 = _image(block.conv1.forward_rows(h).relu_(), n, height, width)
                relu2 = block.conv2.forward(relu1)
                shortcut = _rows(h) if block.downsample is None else block.downsample.forward_rows(h)
                # conv3 + bias + shortcut, then the block's ReLU: one GEMM accumulating into the shortcut
                total = torch.addmm(shortcut, _rows(relu2), block.conv3.weight.t()).add_(block.conv3.bias)
                out = _image(total.relu_(), n, *relu2.shape[2:])
                saved.append(_Saved(tuple(h.shape), relu1, relu2, out))
                features[block.stage] = h = out
            logits = torch.addmm(self.fc_bias, h.mean((2, 3)), self.fc_weight.t())
        return logits, features, saved

    def stage_gradients(self, saved: list[_Saved], layer4_shape: tuple[int, ...], cotangent: Tensor) -> dict[str, Tensor]:
        """The gradient of ``cotangent . logits`` at every stage's output: stage -> (B, C, h, w).

        ``cotangent`` is (B, 10): one row per backward. Row b belongs to image b % N of the
        N the forward pass ran (so B = N for one class each, or a multiple for several)."""
        with torch.inference_mode():
            b = cotangent.shape[0]
            _, c, height, width = layer4_shape
            # logits = fc(mean over pixels): each pixel of layer4 gets fc's row over its count
            grad = (cotangent.float() @ self.fc_weight / (height * width))[:, :, None, None]
            grad = grad.expand(b, c, height, width).contiguous(memory_format=torch.channels_last)
            grads = {STAGE_NAMES[-1]: grad}
            for i in range(len(self.blocks) - 1, -1, -1):
                block, kept = self.blocks[i], saved[i]
                if block.stage == STAGE_NAMES[0]:
                    break  # layer1's output gradient is the last one Grad-CAM needs
                grad = _relu_backward(grad, kept.output)
                rows = _rows(grad)
                grad2 = _relu_backward(_image(rows @ block.conv3.weight, b, *kept.output.shape[2:]), kept.relu2)
                grad1 = _relu_backward(block.conv2.backward(grad2, kept.relu1.shape), kept.relu1)
                back = _rows(grad1) @ block.conv1.weight
                back += rows if block.downsample is None else block.downsample.backward(rows, kept.input_shape)
                grad = _image(back, b, *kept.input_shape[2:])
                if self.blocks[i - 1].stage != block.stage:
                    grads[self.blocks[i - 1].stage] = grad
            return grads


class PrepackedPass:
    """One forward pass of ``PrepackedResNet``, kept so that Grad-CAM of any class costs one
    backward: the interface of ``insight.gradcam.GradCamPass`` (without ``block_ratios``)."""

    def __init__(self, net: PrepackedResNet, x: Tensor) -> None:
        self._net = net
        self.logits, self.features, saved = net.forward(x.detach())
        self._saved: list[_Saved] | None = saved

    @property
    def predicted(self) -> Tensor:
        return self.logits.argmax(1)

    def cams(self, targets: Tensor | list[int] | int | None = None) -> dict[str, Tensor]:
        """stage -> (N, h, w) float32 >= 0: Grad-CAM of each example's target class (default: its prediction)."""
        n = self.logits.shape[0]
        chosen = self.predicted if targets is None else torch.as_tensor(targets, dtype=torch.long).reshape(-1)
        if chosen.numel() == 1:
            chosen = chosen.expand(n)
        if chosen.shape != (n,):
            raise ValueError(f"need one target per image: {chosen.numel()} targets for {n} images")
        if int(chosen.min()) < 0 or int(chosen.max()) >= NUM_CLASSES:
            raise ValueError(f"targets must be class indices 0..{NUM_CLASSES - 1}")
        return {name: cam[0] for name, cam in self._maps(F.one_hot(chosen, NUM_CLASSES)[None]).items()}

    def cams_of_every_class(self) -> dict[str, Tensor]:
        """stage -> (10, N, h, w): Grad-CAM of each class for every example, from one batched backward."""
        n = self.logits.shape[0]
        return self._maps(torch.eye(NUM_CLASSES)[:, None, :].expand(NUM_CLASSES, n, NUM_CLASSES))

    def _maps(self, cotangents: Tensor) -> dict[str, Tensor]:
        """(B, N, 10) cotangents -> stage -> (B, N, h, w) maps."""
        saved = self._saved
        if saved is None:
            raise RuntimeError("this PrepackedPass was closed; run a new one")
        b, n, k = cotangents.shape
        grads = self._net.stage_gradients(saved, tuple(self.features[STAGE_NAMES[-1]].shape),
                                          cotangents.reshape(b * n, k))
        with torch.inference_mode():
            maps = {}
            for name in STAGE_NAMES:
                grad, act = grads[name], self.features[name]
                weights = grad.mean((2, 3)).reshape(b, n, -1)  # Grad-CAM's channel weights
                maps[name] = torch.relu(torch.einsum("bnc,nchw->bnhw", weights, act))
            return maps

    def close(self) -> None:
        self._saved = None


# ----- choosing between this and autograd ---------------------------------------------------


class PassMaker:
    """Makes the Grad-CAM passes of one model: ``maker(x)`` -> a ``Pass``.

    Starts on autograd (``GradCamPass``); ``choose()`` builds the prepacked engine, checks
    it against autograd on a probe image and switches to it where it agrees (about half
    a second, once: the explorer runs it in its background warm-up, off the request path).
    ``engine`` says which engine runs now and ``reason`` why autograd was kept, if it was.
    Both engines give the same results, so passes made before and after the switch agree.
    """

    def __init__(self, model: ResNet, side: int = 32) -> None:
        self.model, self.side = model, side
        self._make: Callable[[Tensor], Pass] = lambda x: GradCamPass(model, x)
        self.engine, self.reason = "autograd", "the prepacked engine is not checked yet"

    def __call__(self, x: Tensor) -> Pass:
        return self._make(x)

    def choose(self) -> str:
        """Switch to the prepacked engine if it builds and agrees with autograd; returns ``engine``."""
        try:
            net = PrepackedResNet(self.model, self.side)
            probe = probe_image(self.side)
            differs = disagreement(GradCamPass(self.model, probe), net.run(probe))
        except Exception as exc:  # no oneDNN, another stem, an op this build lacks: autograd is always right
            self.reason = f"the prepacked engine is unavailable: {exc}"
            return self.engine
        if differs:
            self.reason = f"the prepacked engine disagrees with autograd: {differs}"
            return self.engine
        self._make = net.run  # one assignment: a request sees the old engine or the new one
        self.engine, self.reason = "prepacked oneDNN", ""
        return self.engine


# Two correct float32 computations of the forward pass agree to ~1e-6 of each tensor's scale.
# Their Grad-CAM maps agree as closely, except where rounding puts a pre-activation on the
# other side of zero: that ReLU then passes gradient in one and not in the other, which has
# moved a small map by 1.6% of its peak in the tests' random nets. So the forward pass is
# held tight (a wrong kernel, even one lost bias, moves the logits by ~1e-3) and the maps
# loosely (a wrong backward step moves them by tens of percent).
FORWARD_AGREEMENT = 1e-4
MAPS_AGREEMENT = 5e-2


def disagreement(reference: Pass, candidate: Pass, classes: tuple[int, ...] = (0, 3, 7)) -> str:
    """'' when two passes of one input give the same logits and features (within
    ``FORWARD_AGREEMENT`` of each tensor's scale) and the same maps of the prediction and
    of ``classes``, one at a time and all at once (within ``MAPS_AGREEMENT``); else what
    differs. ``reference`` is only asked for one class at a time: autograd's batched
    backward makes torch import sympy, half a second of a start."""

    def off(a: Tensor, b: Tensor, within: float) -> bool:
        scale = float(a.abs().max()) or 1.0
        return a.shape != b.shape or float((a - b.to(a.dtype)).abs().max()) > within * scale

    if off(reference.logits, candidate.logits, FORWARD_AGREEMENT):
        return "the logits differ"
    for name, act in reference.features.items():
        if off(act, candidate.features[name], FORWARD_AGREEMENT):
            return f"the {name} activations differ"
    every = candidate.cams_of_every_class()
    for c in dict.fromkeys([int(reference.predicted[0]), *classes]):
        expected, got = reference.cams(c), candidate.cams(c)
        for name, maps in expected.items():
            if off(maps, got[name], MAPS_AGREEMENT):
                return f"the {name} Grad-CAM of class {c} differs"
            if off(maps, every[name][c], MAPS_AGREEMENT):
                return f"the {name} Grad-CAM of class {c} differs when every class is computed at once"
    return ""


def probe_image(side: int = 32) -> Tensor:
    """A fixed, normalised-looking input: the engines are compared on it at load."""
    return torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))


def grad_cam_passes(model: ResNet, side: int = 32) -> PassMaker:
    """The fastest way to run Grad-CAM passes of ``model`` (in eval mode) that gives autograd's
    results, chosen now: a ``PassMaker`` on which ``choose()`` has run."""
    maker = PassMaker(model, side)
    maker.choose()
    return maker
