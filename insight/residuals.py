"""Why residuals: the two claims of He et al. (2015) about shortcuts, each measured on our networks.

- **Gradient flow.** The norm of the loss gradient at the image (the stem's input) and at the input
  of each of the 16 blocks, for the served model and for ResNet-50 and plain-50 at initialisation
  (``gradient_flow``; ``describe_flow`` says in one line what the numbers show).
- **Lesions** (Veit, Wilber & Belongie 2016, "Residual networks behave like ensembles of relatively
  shallow networks"): a block with its residual branch removed computes ReLU(shortcut(x)) alone.
  ``lesion_probabilities`` gives one image's class probabilities with each block removed in turn, in
  one batched pass; ``lesion_study`` the top-1 accuracy over a set of images with each block and each
  pair of adjacent blocks removed; ``describe_lesions`` the sentence for it.

Networks at initialisation run their BatchNorm on the batch's own statistics (training mode), as
training sees them; ``initial_networks`` builds such twins, which nothing that uses them changes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnet.constants import NUM_CLASSES
from resnet.model import ResNet, plain50, resnet50

LESIONS_FILE = "lesions.json"  # the served weights' lesion study (python -m train.lesions, and the export)
TWIN_FILE = "plain_vs_residual.json"  # the twins' training and lesion studies (python -m train.twin)
INIT_SEED = 0  # the networks at initialisation are always the same draw
FLOW_POINTS_FIRST = "image"  # the first point of a gradient-flow curve: the stem's input


def flow_points(model: ResNet) -> list[str]:
    """Where ``gradient_flow`` measures: the image, then the input of each block."""
    return [FLOW_POINTS_FIRST, *model.blocks()]


def initial_networks(seed: int = INIT_SEED) -> dict[str, ResNet]:
    """ResNet-50 and plain-50 as they start training: our He init from one seed, BatchNorm on batch
    statistics (training mode) without running statistics, so that using them changes nothing in them
    (two requests may use them at once)."""
    nets = {}
    for name, make in (("ResNet-50 at initialisation", resnet50), ("plain-50 at initialisation", plain50)):
        torch.manual_seed(seed)
        net = make().train().requires_grad_(False)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.track_running_stats = False  # batch statistics, and no buffer is ever written
        nets[name] = net
    return nets


def _through_blocks(model: ResNet, h: Tensor) -> tuple[list[Tensor], Tensor]:
    """The stem's output ``h`` through the 16 blocks: every block's input, and the last block's output."""
    inputs = []
    for block in model.blocks().values():
        inputs.append(h)
        h = block(h)
    return inputs, h


def gradient_flow(model: ResNet, x: Tensor, target: int) -> np.ndarray:
    """||dL/dh|| at the image and at the input of each of the 16 blocks (17 float64 values), L being
    the cross-entropy of class ``target`` for the one image ``x`` (1, 3, 32, 32). One forward and one
    backward pass; the model's weights need no gradient and are not changed."""
    if x.shape[0] != 1:
        raise ValueError(f"gradient_flow takes one image, got a batch of {x.shape[0]}")
    with torch.enable_grad():
        image = x.detach().clone().requires_grad_(True)
        inputs, h = _through_blocks(model, model.forward_stem(image))
        loss = F.cross_entropy(model.forward_head(h), torch.tensor([target], device=x.device))
        grads = torch.autograd.grad(loss, [image, *inputs])
    return np.array([float(g.double().norm()) for g in grads])


def _factor_words(factor: float) -> str:
    return f"{factor:,.0f}x" if factor >= 10 else f"{factor:.2g}x" if factor >= 0.1 else f"1/{1 / factor:,.0f}"


def describe_flow(flows: dict[str, np.ndarray]) -> str:
    """One sentence from the numbers: how each network's gradient changes from the last block's input
    back to the first block's, and which network keeps it steadiest (closest to 1x on a log scale)."""
    factors = {}
    for name, norms in flows.items():
        first, last = float(norms[1]), float(norms[-1])
        if not (first > 0 and last > 0 and math.isfinite(first) and math.isfinite(last)):
            return f"The gradient of {name} is zero or not finite at some block here, so the curves cannot be compared."
        factors[name] = first / last
    parts = [f"{_factor_words(f)} in {name}" for name, f in factors.items()]
    steadiest = min(factors, key=lambda n: abs(math.log(factors[n])))
    wildest = max(factors, key=lambda n: abs(math.log(factors[n])))
    how = "explodes" if factors[wildest] > 1 else "vanishes"
    return (
        f"From the last block's input back to the first block's, the gradient's norm changes by "
        f"{', '.join(parts[:-1])} and {parts[-1]}: {steadiest} keeps it steadiest, {wildest} the least "
        f"(it {how})." if len(parts) > 1 else
        f"From the last block's input back to the first block's, the gradient's norm changes by {parts[0]}."
    )


@torch.no_grad()
def lesion_probabilities(model: ResNet, x: Tensor) -> np.ndarray:
    """Class probabilities of the one image ``x``: row 0 intact, row k with block k-1 removed (17, classes).

    One pass whose batch grows by a row at every block: row k leaves the intact row at block k-1,
    through ReLU(shortcut(x)) only, and then goes on through the intact blocks after it."""
    if x.shape[0] != 1:
        raise ValueError(f"lesion_probabilities takes one image, got a batch of {x.shape[0]}")
    h = model.forward_stem(x)
    for block in model.blocks().values():
        h = torch.cat([block(h), block.without_branch(h[:1])])
    return F.softmax(model.forward_head(h).float(), dim=1).cpu().numpy()


def adjacent_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    return list(zip(names[:-1], names[1:]))


def lesion_possible(model: ResNet, lesion: Iterable[str]) -> bool:
    """A plain block that changes the shape leaves nothing behind when removed."""
    blocks = model.blocks()
    return all(blocks[n].has_shortcut or blocks[n].keeps_shape() for n in lesion)


@dataclass(frozen=True)
class LesionStudy:
    blocks: list[str]
    intact: float  # top-1 accuracy
    single: dict[str, float | None]  # block -> top-1 with its branch removed (None: not possible)
    pairs: dict[str, float | None]  # "a+b" -> top-1 with both removed
    reshaping: list[str]  # the blocks whose output differs in shape from their input (stride or width)
    images: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"blocks": self.blocks, "intact": self.intact, "single": self.single, "pairs": self.pairs,
                "reshaping": self.reshaping, "images": self.images, "seconds": self.seconds}


@torch.no_grad()
def lesion_study(model: ResNet, batches: Iterable[tuple[Tensor, Tensor]],
                 progress: Callable[[int], None] | None = None) -> LesionStudy:
    """Top-1 accuracy on ``batches`` of (normalised images, labels) intact, with each block's branch
    removed and with each pair of adjacent blocks' removed, in float32 and eval mode.

    Each batch runs intact once, keeping every block's input; a lesion then runs from the input of its
    first removed block only (the blocks before it compute what they computed intact)."""
    started = time.perf_counter()
    model.eval()
    names = list(model.blocks())
    blocks = list(model.blocks().values())
    lesions = [(n,) for n in names] + adjacent_pairs(names)
    possible = [lesion for lesion in lesions if lesion_possible(model, lesion)]
    correct = {lesion: 0 for lesion in possible}
    intact = total = 0
    for images, labels in batches:
        inputs, h = _through_blocks(model, model.forward_stem(images))
        intact += int((model.forward_head(h).argmax(1) == labels).sum())
        for lesion in possible:
            start = names.index(lesion[0])
            h = inputs[start]
            with model.branches_removed(lesion):
                for block in blocks[start:]:
                    h = block(h)
                correct[lesion] += int((model.forward_head(h).argmax(1) == labels).sum())
        total += len(labels)
        if progress is not None:
            progress(total)
    if total == 0:
        raise ValueError("a lesion study needs at least one image")

    def acc(lesion: tuple[str, ...]) -> float | None:
        return correct[lesion] / total if lesion in correct else None

    return LesionStudy(
        blocks=names,
        intact=intact / total,
        single={n: acc((n,)) for n in names},
        pairs={f"{a}+{b}": acc((a, b)) for a, b in adjacent_pairs(names)},
        reshaping=[n for n, b in zip(names, blocks) if not b.keeps_shape()],
        images=total,
        seconds=round(time.perf_counter() - started, 1),
    )


def describe_lesions(study: dict[str, Any], model_name: str = "the served model") -> str:
    """What a lesion study shows, from its numbers: how many single removals cost little, which cost
    most, and whether the blocks that change the shape (their shortcut is a projection) stand out."""
    single = {n: a for n, a in study["single"].items() if a is not None}
    if not single:
        return f"No residual branch of {model_name} could be removed."
    intact = study["intact"]
    drops = {n: (intact - a) * 100 for n, a in single.items()}
    small = [n for n, d in drops.items() if d < 2.0]
    worst = sorted(drops, key=drops.get, reverse=True)[:3]
    reshaping = [n for n in study.get("reshaping", []) if n in drops]
    others = [n for n in drops if n not in reshaping]
    text = (
        f"Intact, {model_name} gets {intact * 100:.1f}% of the {study['images']:,} images right. Removing one "
        f"branch costs less than 2 points for {len(small)} of {len(drops)} blocks; the dearest are "
        + ", ".join(f"{n} ({-drops[n]:+.1f})" for n in worst) + "."
    )
    chance = 1 / NUM_CLASSES
    if intact < 2 * chance:
        text += (f" At {intact:.1%} it is close to chance ({chance:.0%} for {NUM_CLASSES} classes), so what its "
                 "lesions cost says little.")
    if reshaping and others:
        mean_r = float(np.mean([drops[n] for n in reshaping]))
        mean_o = float(np.mean([drops[n] for n in others]))
        verdict = ("as Veit et al. found, the blocks that change the shape matter most" if mean_r > mean_o
                   else "unlike Veit et al.'s finding, the blocks that change the shape are not the ones that matter most")
        text += (f" The {len(reshaping)} blocks that change the shape cost {mean_r:.1f} points on average, the other "
                 f"{len(others)} {mean_o:.1f}: {verdict}.")
    return text
