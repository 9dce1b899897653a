"""ResNet-50 written from scratch (He et al. 2015, "Deep Residual Learning").

Module names follow torchvision's ``resnet.py`` (``conv1, bn1, layer1..layer4,
fc``; blocks with ``conv1..conv3, bn1..bn3, downsample``) so that a state dict
of ours loads with ``strict=True`` into ``torchvision.models.resnet50`` once its
stem is made the same, and gives the same logits.

Unlike torchvision, every block owns its three ReLU modules and none of them is
in-place: a single shared in-place ReLU makes a forward hook see a tensor that
is overwritten later, which is the classic Captum / pytorch-grad-cam bug. The
explicit ``forward_features`` / ``forward_head`` / ``forward_intermediates`` /
``block_anatomies`` methods give the app every tensor it shows without hooks.
"""

from __future__ import annotations

import copy
import itertools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .constants import NUM_CLASSES

Stem = Literal["cifar", "imagenet"]
STAGE_NAMES: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")
FEATURE_NAMES: tuple[str, ...] = ("stem",) + STAGE_NAMES


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every conv is followed by BatchNorm, whose shift makes it redundant.
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


@dataclass(frozen=True)
class FeatureInfo:
    """One tensor that ``forward_intermediates`` returns."""

    name: str
    channels: int
    stride: int  # input pixels per feature-map cell along one side
    description: str


@dataclass(frozen=True)
class BlockAnatomy:
    """What happens inside one bottleneck block: out = relu(F(x) + x)."""

    name: str  # e.g. "layer3.2"
    input: Tensor  # what the block receives
    shortcut: Tensor  # x: the identity, or its 1x1 projection where the shape changes
    residual: Tensor  # F(x): conv1-bn1-relu-conv2-bn2-relu-conv3-bn3
    sum: Tensor  # F(x) + x, before the final ReLU
    output: Tensor  # relu(F(x) + x)


@dataclass(frozen=True)
class Intermediates:
    logits: Tensor
    features: dict[str, Tensor]  # keyed by FEATURE_NAMES, in order


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand, plus a shortcut.

    The stride sits on the 3x3 conv (conv2), not on the first 1x1 conv as in
    the original paper: this is the "ResNet v1.5" placement used by torchvision
    and most modern code, slightly more accurate because a strided 1x1 conv
    throws away three quarters of its input positions.
    """

    expansion: int = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        shortcut: bool = True,
    ) -> None:
        """``shortcut=False`` makes the plain block of He et al.'s baselines: out = ReLU(F(x)), no path around F."""
        super().__init__()
        width = planes
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU()
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu3 = nn.ReLU()
        self.downsample = downsample
        self.stride = stride
        self.has_shortcut = shortcut
        # Lesion study (Veit et al. 2016): with the branch removed the block computes ReLU(shortcut(x)) alone.
        self.branch_removed = False

    def residual(self, x: Tensor) -> Tensor:
        """F(x), the part of the block that learns."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def shortcut(self, x: Tensor) -> Tensor:
        if not self.has_shortcut:  # a plain block: nothing goes around F
            n, _, h, w = x.shape
            return x.new_zeros(n, self.conv3.out_channels, -(-h // self.stride), -(-w // self.stride))
        return x if self.downsample is None else self.downsample(x)

    def keeps_shape(self) -> bool:
        """Whether the output has the input's shape (no stride, no change of width)."""
        return self.stride == 1 and self.conv1.in_channels == self.conv3.out_channels

    def without_branch(self, x: Tensor) -> Tensor:
        """The block with its residual branch removed: ReLU(shortcut(x)).

        A plain block has no shortcut; removing it leaves the identity where the shape allows
        (which is what the same lesion gives a residual block there, x being a ReLU output
        already), and no network at all where it does not (ValueError)."""
        if self.has_shortcut:
            return self.relu3(x if self.downsample is None else self.downsample(x))
        if not self.keeps_shape():
            raise ValueError("a plain block that changes the shape cannot be removed: nothing would be left to "
                             "carry its input on")
        return x

    def forward(self, x: Tensor) -> Tensor:
        if self.branch_removed:
            return self.without_branch(x)
        out = self.residual(x)
        if not self.has_shortcut:
            return self.relu3(out)
        if self.relu3.inplace:  # training's path (ResNet.inplace_activations): the sum into F(x)'s own memory
            out += self.shortcut(x)
            return self.relu3(out)
        return self.relu3(out + self.shortcut(x))

    def anatomy(self, x: Tensor, name: str = "") -> BlockAnatomy:
        residual = self.residual(x)
        shortcut = self.shortcut(x)
        total = residual + shortcut
        return BlockAnatomy(name, x, shortcut, residual, total, self.relu3(total))


class ResNet(nn.Module):
    def __init__(
        self,
        layers: tuple[int, int, int, int] = (3, 4, 6, 3),
        num_classes: int = NUM_CLASSES,
        stem: Stem = "cifar",
        zero_init_residual: bool = True,
        init_weights: bool = True,
        shortcuts: bool = True,
    ) -> None:
        """``init_weights=False`` skips the He init below (torch's default init stays): for a
        model whose every weight is loaded at once, where it would be 0.1 s of wasted start-up.
        ``shortcuts=False`` removes every shortcut, projections included: He et al.'s plain net."""
        super().__init__()
        self.shortcuts = shortcuts
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        self.stem_kind: Stem = stem
        self.inplanes = 64
        if stem == "cifar":
            # A 32x32 image cannot afford the paper's 4x early downsampling:
            # layer4 would be 1x1. A 3x3 stride-1 conv keeps full resolution.
            self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool: nn.Module = nn.Identity()
            stem_stride = 1
        else:
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            stem_stride = 4
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)

        e = Bottleneck.expansion
        self.feature_info: list[FeatureInfo] = [
            FeatureInfo("stem", 64, stem_stride, "conv1-bn1-relu" + ("-maxpool" if stem == "imagenet" else "")),
            FeatureInfo("layer1", 64 * e, stem_stride, f"stage 1: {layers[0]} bottleneck blocks"),
            FeatureInfo("layer2", 128 * e, stem_stride * 2, f"stage 2: {layers[1]} bottleneck blocks"),
            FeatureInfo("layer3", 256 * e, stem_stride * 4, f"stage 3: {layers[2]} bottleneck blocks"),
            FeatureInfo("layer4", 512 * e, stem_stride * 8, f"stage 4: {layers[3]} bottleneck blocks"),
        ]
        if init_weights:
            self._init_weights(zero_init_residual)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if self.shortcuts and (stride != 1 or self.inplanes != planes * Bottleneck.expansion):
            # Projection shortcut (option B of the paper) only where the shape
            # changes; elsewhere the identity, which adds no parameters.
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * Bottleneck.expansion, stride),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, shortcut=self.shortcuts)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes, shortcut=self.shortcuts) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He init for ReLU nets; fan_out keeps the backward signal's
                # variance constant, which is what matters at depth 50.
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual and self.shortcuts:
            # With the last BN's gamma at zero every block starts as the
            # identity, so at step 0 the 50-layer net behaves like a shallow
            # one and trains stably with large learning rates (Goyal et al.
            # 2017, "Accurate, Large Minibatch SGD"). A plain net cannot have it: a block whose F is
            # zero outputs ReLU(0) = 0 and the whole net would start dead.
            for block in self.blocks().values():
                nn.init.zeros_(block.bn3.weight)

    # ----- the explicit feature API -------------------------------------------------

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    @contextmanager
    def inplace_activations(self) -> Iterator[ResNet]:
        """Inside the block, every ReLU and every block's sum work in place, as torchvision's do.

        The training step's faster path: on a CPU the step is bound by memory traffic as much as
        by arithmetic, and each in-place op saves writing a new tensor. Off again afterwards, so
        that hooks, anatomies and Grad-CAM never see a tensor that a later op overwrites.
        """
        relus = [m for m in self.modules() if isinstance(m, nn.ReLU)]
        before = [m.inplace for m in relus]
        for m in relus:
            m.inplace = True
        try:
            yield self
        finally:
            for m, was in zip(relus, before):
                m.inplace = was

    def forward_features(self, x: Tensor) -> Tensor:
        """Image -> layer4 output (N, 2048, H/8, W/8 with the CIFAR stem)."""
        x = self.forward_stem(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """layer4 output -> logits (or the pooled 2048-d vector)."""
        x = torch.flatten(self.avgpool(x), 1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: Tensor) -> Intermediates:
        """Logits plus the stem's and every stage's output, as in ``feature_info``."""
        features: dict[str, Tensor] = {}
        x = features["stem"] = self.forward_stem(x)
        for name in STAGE_NAMES:
            x = features[name] = getattr(self, name)(x)
        return Intermediates(self.forward_head(x), features)

    def blocks(self) -> dict[str, Bottleneck]:
        """The 16 bottleneck blocks in order, keyed "layer1.0" .. "layer4.2"."""
        return {
            f"{stage}.{i}": block
            for stage in STAGE_NAMES
            for i, block in enumerate(getattr(self, stage))
        }

    @contextmanager
    def branches_removed(self, names: Iterable[str]) -> Iterator[ResNet]:
        """Inside the block, the named blocks compute ReLU(shortcut(x)) alone (a lesion study)."""
        blocks = self.blocks()
        chosen = list(names)
        for name in chosen:
            if name not in blocks:
                raise KeyError(f"no block {name!r}; blocks are {', '.join(blocks)}")
        before = {name: blocks[name].branch_removed for name in chosen}
        for name in chosen:
            blocks[name].branch_removed = True
        try:
            yield self
        finally:
            for name, was in before.items():
                blocks[name].branch_removed = was

    def block_anatomies(self, x: Tensor) -> tuple[Tensor, list[BlockAnatomy]]:
        """One forward pass that keeps x, F(x), F(x)+x and the output of every block."""
        x = self.forward_stem(x)
        anatomies = []
        for name, block in self.blocks().items():
            anatomy = block.anatomy(x, name)
            anatomies.append(anatomy)
            x = anatomy.output
        return self.forward_head(x), anatomies

    def block_anatomy(self, x: Tensor, block: int | str) -> BlockAnatomy:
        """The anatomy of one block, by index 0..15 or by name like "layer2.1"."""
        names = list(self.blocks())
        name = names[block] if isinstance(block, int) else block
        if name not in names:
            raise KeyError(f"no block {block!r}; blocks are {names[0]}..{names[-1]} or 0..{len(names) - 1}")
        x = self.forward_stem(x)
        for current, module in self.blocks().items():
            if current == name:
                return module.anatomy(x, name)
            x = module(x)
        raise AssertionError("unreachable")


def resnet50(num_classes: int = NUM_CLASSES, stem: Stem = "cifar", zero_init_residual: bool = True,
             init_weights: bool = True) -> ResNet:
    """ResNet-50: bottleneck blocks [3, 4, 6, 3], 23,520,842 parameters for 10 classes (CIFAR stem)."""
    return ResNet((3, 4, 6, 3), num_classes=num_classes, stem=stem, zero_init_residual=zero_init_residual,
                  init_weights=init_weights)


def plain50(num_classes: int = NUM_CLASSES, stem: Stem = "cifar", init_weights: bool = True) -> ResNet:
    """Plain-50, ResNet-50's twin without shortcuts (He et al. 2015, Sec. 4.1's plain baselines): the same
    layers and He init, every identity and projection shortcut removed, each block ReLU(F(x)). Its last
    BatchNorm scales start at 1, not 0 (see ``ResNet._init_weights``)."""
    return ResNet((3, 4, 6, 3), num_classes=num_classes, stem=stem, zero_init_residual=False,
                  init_weights=init_weights, shortcuts=False)


ARCHITECTURES = {"resnet50": resnet50, "plain50": plain50}
ARCHITECTURE_NAMES = {"resnet50": "ResNet-50", "plain50": "plain-50"}


def fuse_batchnorm(model: ResNet) -> ResNet:
    """A copy for serving: every BatchNorm folded into the convolution before it.

    In eval mode BN is a fixed per-channel affine map, so ``conv -> bn`` equals
    one conv with rescaled weights and a bias: the same function (to float
    rounding) with 53 fewer layers to run and to backpropagate through, which
    is ~10% of the explorer's analysis time on a CPU. The copy computes the
    same logits, stage outputs, F(x) and Grad-CAM; it has no BN parameters to
    show or to re-initialise, so it is for computing only. ``model`` is untouched.
    """
    # The modules are copied but not their tensors (the memo maps each to itself): every
    # conv gets new, fused tensors below and the rest is cloned, so nothing is shared in
    # the end, without copying 94 MB of weights that would be replaced at once.
    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    fused = copy.deepcopy(model, memo).eval()

    def fold(owner: nn.Module, conv_name: str, bn_name: str) -> None:
        conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
        conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                      bn.eps, bn.weight, bn.bias)
        setattr(owner, bn_name, nn.Identity())

    fold(fused, "conv1", "bn1")
    for block in fused.blocks().values():
        for i in (1, 2, 3):
            fold(block, f"conv{i}", f"bn{i}")
        if block.downsample is not None:
            fold(block.downsample, "0", "1")
            block.downsample = nn.Sequential(block.downsample[0])
    fused.fc.weight = nn.Parameter(model.fc.weight.detach().clone(), model.fc.weight.requires_grad)
    fused.fc.bias = nn.Parameter(model.fc.bias.detach().clone(), model.fc.bias.requires_grad)
    return fused
