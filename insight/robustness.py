"""Robustness probes: what a corruption or an adversarial nudge does to the prediction.

Image perturbations work on uint8 (H, W, 3) RGB arrays and return new uint8
arrays of the same shape, so what the user sees is exactly what is classified.
Every strength is 0 at the identity, and every random one is fixed by a seed:
moving a slider back gives back the same picture.

Units: intensities are fractions of the full 0..255 range (a noise sigma of 0.1
is 25.5 grey levels), blur is a Gaussian sigma in pixels, and the FGSM epsilon
is an L-infinity step in the same 0..1 pixel space (8/255 is the usual CIFAR
budget). FGSM attacks the model *with its normalisation in front*, so the step
and the clamp to [0, 1] are in pixel space, not in normalised units.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnet.constants import CLASSES, MEAN
from resnet.preprocess import denormalise, images_to_pixels, normalise, to_model_input

from .gradcam import analyze, top_k

SWEEP_KINDS: tuple[str, ...] = ("noise", "blur", "brightness", "contrast", "occlusion", "fgsm")

# What a sweep's strength means, for axis titles.
STRENGTH_UNITS: dict[str, str] = {
    "noise": "noise sigma (fraction of 0..255)",
    "blur": "blur sigma (pixels)",
    "brightness": "brightness shift (fraction of 0..255)",
    "contrast": "contrast reduction (0 = none, 1 = flat grey)",
    "occlusion": "occluding patch side (pixels)",
    "fgsm": "FGSM epsilon (fraction of 0..255, L-inf)",
}

Fill = Literal["mean", "dataset", "gray", "black"]


class PerturbationError(ValueError):
    """A perturbation was asked for with an impossible strength or image."""


class SweepPoint(NamedTuple):
    strength: float
    true_prob: float  # softmax probability of the true (or reference) class
    pred: int  # argmax class of the perturbed image
    pred_prob: float  # its probability


# ----- image <-> model input -----------------------------------------------------------


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise PerturbationError(f"Expected a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}.")
    return image


def _from_unit(x: np.ndarray) -> np.ndarray:
    """float image on a 0..1 scale -> uint8, rounding to the nearest level."""
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


class PixelSpaceModel(nn.Module):
    """The classifier with its input normalisation in front: takes 0..1 RGB pixels.

    Attacks and clamps then live in the space the user sees, so an epsilon means
    the same thing on every channel.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: Tensor) -> Tensor:
        return self.model(normalise(pixels))


def predict_probs(model: nn.Module, images: np.ndarray) -> np.ndarray:
    """Softmax probabilities (N, classes) float32 for uint8 images, in one forward pass."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(normalise(images_to_pixels(images).to(device)))
    return torch.softmax(logits.float(), dim=1).cpu().numpy()


# ----- corruptions on uint8 images -----------------------------------------------------


def gaussian_noise(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    """Add i.i.d. Gaussian noise of std ``sigma`` (fraction of 0..255), then clip.

    The same seed draws the same noise pattern at every sigma, so a sweep over
    sigma scales one pattern instead of reshuffling it.
    """
    image = _check_image(image)
    if not np.isfinite(sigma) or sigma < 0:
        raise PerturbationError(f"Noise sigma must be >= 0, got {sigma}.")
    if sigma == 0:
        return image.copy()
    noise = np.random.default_rng(seed).standard_normal(image.shape)
    return _from_unit(image / 255.0 + sigma * noise)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3.0 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with std ``sigma`` pixels (separable, edges reflected)."""
    image = _check_image(image)
    if not np.isfinite(sigma) or sigma < 0:
        raise PerturbationError(f"Blur sigma must be >= 0 pixels, got {sigma}.")
    if sigma == 0:
        return image.copy()
    k = _gaussian_kernel(sigma)
    r = len(k) // 2
    x = image.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0)] * 3
        pad[axis] = (r, r)
        # "symmetric" = reflect including the edge pixel, so a flat image stays flat.
        padded = np.pad(x, pad, mode="symmetric")
        n = x.shape[axis]
        x = sum(w * np.take(padded, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def brightness_contrast(image: np.ndarray, brightness: float = 0.0, contrast: float = 1.0) -> np.ndarray:
    """out = (x - 0.5) * contrast + 0.5 + brightness on a 0..1 scale, clipped.

    brightness 0 and contrast 1 give the image back; contrast 0 is flat mid-grey
    (shifted by brightness).
    """
    image = _check_image(image)
    if not (np.isfinite(brightness) and np.isfinite(contrast)) or contrast < 0:
        raise PerturbationError(f"Contrast must be >= 0 and both finite, got brightness={brightness}, contrast={contrast}.")
    if brightness == 0 and contrast == 1:
        return image.copy()
    return _from_unit((image / 255.0 - 0.5) * contrast + 0.5 + brightness)


def fill_colour(image: np.ndarray, fill: Fill | Sequence[int] = "mean") -> np.ndarray:
    """The patch colour as uint8 (3,).

    "mean": this image's mean colour (removes the content, keeps the overall tint);
    "dataset": CIFAR-10's mean colour, which is exactly zero after normalisation;
    "gray": 128; "black": 0; or an explicit RGB triple.
    """
    image = _check_image(image)
    if isinstance(fill, str):
        if fill == "mean":
            return np.rint(image.reshape(-1, 3).mean(axis=0)).astype(np.uint8)
        if fill == "dataset":
            return np.rint(np.asarray(MEAN) * 255).astype(np.uint8)
        if fill == "gray":
            return np.full(3, 128, np.uint8)
        if fill == "black":
            return np.zeros(3, np.uint8)
        raise PerturbationError(f"Unknown fill {fill!r}; use 'mean', 'dataset', 'gray', 'black' or an RGB triple.")
    rgb = np.asarray(fill)
    if rgb.shape != (3,) or (rgb < 0).any() or (rgb > 255).any():
        raise PerturbationError(f"A fill colour must be three values in 0..255, got {fill!r}.")
    return rgb.astype(np.uint8)


def patch_box(shape: tuple[int, ...], x: int, y: int, size: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a ``size`` square centred on column x, row y, clipped to the image.

    For an even size the centre is the lower-right of the middle four pixels.
    """
    h, w = shape[:2]
    top, left = int(y) - int(size) // 2, int(x) - int(size) // 2
    return max(top, 0), min(top + int(size), h), max(left, 0), min(left + int(size), w)


def occlude(image: np.ndarray, x: int, y: int, size: int, fill: Fill | Sequence[int] = "mean") -> np.ndarray:
    """Paint a ``size`` x ``size`` square centred on (column x, row y); size 0 is the identity."""
    image = _check_image(image)
    if size < 0:
        raise PerturbationError(f"Patch size must be >= 0 pixels, got {size}.")
    h, w = image.shape[:2]
    if not (0 <= x < w and 0 <= y < h):
        raise PerturbationError(f"The patch centre ({x}, {y}) is outside the {w}x{h} image.")
    colour = fill_colour(image, fill)  # of the clean image, so it does not depend on the size
    out = image.copy()
    top, bottom, left, right = patch_box(image.shape, x, y, size)
    out[top:bottom, left:right] = colour
    return out


# ----- FGSM ----------------------------------------------------------------------------


def _per_example_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    # Captum wants one loss per example, not the batch mean.
    return F.cross_entropy(logits, labels, reduction="none")


def _captum_fgsm(model: nn.Module, pixels: Tensor, target: int, epsilon: float, clamp: bool) -> Tensor:
    """One ``captum.robust.FGSM`` step on 0..1 pixels against the normalised model."""
    from .contrast import import_attribution_libraries

    import_attribution_libraries()
    from captum.robust import FGSM

    bounds = {"lower_bound": 0.0, "upper_bound": 1.0} if clamp else {}
    attack = FGSM(PixelSpaceModel(model), loss_func=_per_example_cross_entropy, **bounds)
    # Captum leaves pixels whose |gradient| < 1e-6 alone; a confidently right
    # trained model has gradients that small almost everywhere, which would make
    # it look immune. Only exactly-zero gradients have no sign.
    attack.zero_thresh = 0.0
    labels = torch.full((len(pixels),), int(target), dtype=torch.long, device=pixels.device)
    was_training = model.training
    model.eval()  # BN must use its running statistics, not the attacked batch's
    try:
        # inference_mode(False): callers may sit inside an inference_mode block.
        with torch.inference_mode(False):
            start = pixels.detach().clone().requires_grad_(True)
            return attack.perturb(start, epsilon=float(epsilon), target=labels).detach()
    finally:
        model.train(was_training)


def _fgsm_direction(model: nn.Module, pixels: Tensor, target: int) -> Tensor:
    """sign(d loss / d pixels) as Captum's FGSM takes it.

    Captum's step is x + eps * sign(grad), then a clamp; asking it for eps = 1
    without bounds gives the sign itself, which every epsilon then reuses: one
    backward pass for a whole sweep, with results identical to one call per eps.
    """
    return torch.sign(_captum_fgsm(model, pixels, target, 1.0, clamp=False) - pixels.detach())


def fgsm_pixels(model: nn.Module, pixels: Tensor, target: int, epsilon: float) -> Tensor:
    """Untargeted FGSM in 0..1 pixel space: one signed step that raises the loss of ``target``."""
    if not np.isfinite(epsilon) or epsilon < 0:
        raise PerturbationError(f"FGSM epsilon must be >= 0, got {epsilon}.")
    if epsilon == 0:
        return pixels.detach().clone()
    return _captum_fgsm(model, pixels, target, epsilon, clamp=True)


def fgsm(model: nn.Module, x_normalised: Tensor, target_label: int, epsilon: float) -> Tensor:
    """FGSM on a normalised model input; returns the perturbed input, still normalised.

    ``epsilon`` is in 0..1 pixel units: the attack runs on the de-normalised
    image with the normalisation inside the model, clamped to valid pixels.
    """
    if epsilon == 0:  # skip the float round trip through pixel space
        return x_normalised.detach().clone()
    adv = fgsm_pixels(model, denormalise(x_normalised.detach()), target_label, epsilon)
    return normalise(adv)


def fgsm_image(model: nn.Module, image: np.ndarray, target_label: int, epsilon: float) -> np.ndarray:
    """FGSM on a uint8 image, returned as uint8 (exact for epsilon a multiple of 1/255)."""
    image = _check_image(image)
    device = next(model.parameters()).device
    adv = fgsm_pixels(model, images_to_pixels(image).to(device), target_label, epsilon)
    return _from_unit(adv[0].permute(1, 2, 0).cpu().numpy())


# ----- sweeps and the combined probe ---------------------------------------------------


def default_strengths(kind: str) -> list[float]:
    """A sensible range per kind, 0 (the clean image) first."""
    ranges = {
        "noise": np.linspace(0.0, 0.4, 9),
        "blur": np.linspace(0.0, 2.0, 9),
        "brightness": np.linspace(0.0, 0.6, 7),
        "contrast": np.linspace(0.0, 0.9, 10),
        "occlusion": np.arange(0, 33, 4),
        "fgsm": np.arange(0, 9) / 255.0,
    }
    if kind not in ranges:
        raise PerturbationError(f"Unknown perturbation {kind!r}; choose one of {', '.join(SWEEP_KINDS)}.")
    return [float(s) for s in ranges[kind]]


def perturb(image: np.ndarray, kind: str, strength: float, *, seed: int = 0, x: int | None = None,
            y: int | None = None, fill: Fill | Sequence[int] = "mean") -> np.ndarray:
    """One image corruption by name at one strength (not FGSM, which needs the model).

    contrast's strength is the reduction 1 - contrast; occlusion's is the patch
    side, centred on (x, y), by default the image centre.
    """
    image = _check_image(image)
    if kind == "noise":
        return gaussian_noise(image, strength, seed)
    if kind == "blur":
        return blur(image, strength)
    if kind == "brightness":
        return brightness_contrast(image, brightness=strength)
    if kind == "contrast":
        return brightness_contrast(image, contrast=1.0 - strength)
    if kind == "occlusion":
        h, w = image.shape[:2]
        return occlude(image, w // 2 if x is None else x, h // 2 if y is None else y, int(round(strength)), fill)
    raise PerturbationError(f"Unknown perturbation {kind!r}; choose one of {', '.join(k for k in SWEEP_KINDS if k != 'fgsm')}.")


def sweep_images(model: nn.Module, image: np.ndarray, kind: str, strengths: Sequence[float], true_label: int,
                 **options: Any) -> np.ndarray:
    """The perturbed images (S, H, W, 3) uint8 of a sweep, one per strength."""
    image = _check_image(image)
    if kind != "fgsm":
        return np.stack([perturb(image, kind, s, **options) for s in strengths])
    for s in strengths:
        if not np.isfinite(s) or s < 0:
            raise PerturbationError(f"FGSM epsilon must be >= 0, got {s}.")
    device = next(model.parameters()).device
    pixels = images_to_pixels(image).to(device)
    direction = _fgsm_direction(model, pixels, true_label)
    eps = torch.tensor(list(strengths), dtype=torch.float32, device=device).view(-1, 1, 1, 1)
    adv = (pixels + eps * direction).clamp(0.0, 1.0)
    return _from_unit(adv.permute(0, 2, 3, 1).cpu().numpy())


def sweep(model: nn.Module, image: np.ndarray, kind: str, strengths: Sequence[float] | None, true_label: int,
          **options: Any) -> list[SweepPoint]:
    """How the ``true_label`` probability and the prediction change as one perturbation grows.

    All strengths are classified in one batched forward pass (FGSM adds one
    backward pass, shared by every epsilon). ``true_label`` may be the model's
    own clean prediction when the true class is unknown. ``options`` go to
    ``perturb`` (seed, x, y, fill).
    """
    if not 0 <= true_label < len(CLASSES):
        raise PerturbationError(f"The true label must be in 0..{len(CLASSES) - 1}, got {true_label}.")
    strengths = default_strengths(kind) if strengths is None else [float(s) for s in strengths]
    if not strengths:
        raise PerturbationError("A sweep needs at least one strength.")
    batch = sweep_images(model, image, kind, strengths, true_label, **options)
    probs = predict_probs(model, batch)
    preds = probs.argmax(axis=1)
    return [
        SweepPoint(s, float(p[true_label]), int(k), float(p[k]))
        for s, p, k in zip(strengths, probs, preds)
    ]


def apply_settings(image: np.ndarray, *, noise: float = 0.0, blur_sigma: float = 0.0, brightness: float = 0.0,
                   contrast: float = 1.0, patch_size: int = 0, patch_x: int | None = None,
                   patch_y: int | None = None, fill: Fill | Sequence[int] = "mean", seed: int = 0) -> np.ndarray:
    """All the probe's slider corruptions at once, in a fixed order (photometric, blur, noise, patch).

    Noise comes after blur so the blur does not smooth it away; the patch comes
    last so it is exactly the colour asked for.
    """
    image = _check_image(image)
    h, w = image.shape[:2]
    out = brightness_contrast(image, brightness, contrast)
    out = blur(out, blur_sigma)
    out = gaussian_noise(out, noise, seed)
    if patch_size > 0:
        colour = fill_colour(image, fill)
        out = occlude(out, w // 2 if patch_x is None else patch_x, h // 2 if patch_y is None else patch_y,
                      patch_size, colour)
    return out


def _model_input(image: np.ndarray) -> Tensor:
    from PIL import Image


    return to_model_input(Image.fromarray(image)).tensor


def probe(model: nn.Module, image: np.ndarray, *, true_label: int | None = None, fgsm_epsilon: float = 0.0,
          k: int = 5, **settings: Any) -> dict[str, Any]:
    """The robustness tab in one call: perturb ``image`` as the sliders say, classify and explain both.

    The reference class is ``true_label`` or, when unknown, the clean
    prediction; FGSM (if epsilon > 0) attacks it and is applied last, to the
    corrupted image. Both Grad-CAMs are for the reference class, so the two
    maps answer the same question. ``settings`` go to ``apply_settings``.
    Costs two forward + backward passes (plus one for FGSM).

    Returns plain data: "image" (perturbed uint8), "reference", "clean_probs",
    "probs", "clean_top_k", "top_k" ({class: prob}), "clean_pred", "pred",
    "clean_cams", "cams" ({stage: (h, w) float32}), "reference_prob_change",
    "max_pixel_change" (grey levels).
    """
    image = _check_image(image)
    if true_label is not None and not 0 <= int(true_label) < len(CLASSES):
        raise PerturbationError(f"The true label must be in 0..{len(CLASSES) - 1}, got {true_label}.")
    if not np.isfinite(fgsm_epsilon) or fgsm_epsilon < 0:
        raise PerturbationError(f"FGSM epsilon must be >= 0, got {fgsm_epsilon}.")
    clean = analyze(model, _model_input(image), None if true_label is None else int(true_label))
    reference = clean.target
    perturbed = apply_settings(image, **settings)
    if fgsm_epsilon > 0:
        perturbed = fgsm_image(model, perturbed, reference, fgsm_epsilon)
    after = analyze(model, _model_input(perturbed), reference)
    return {
        "image": perturbed,
        "reference": reference,
        "reference_name": CLASSES[reference],
        "clean_probs": clean.probs,
        "probs": after.probs,
        "clean_top_k": top_k(clean.probs, k),
        "top_k": top_k(after.probs, k),
        "clean_pred": clean.predicted,
        "pred": after.predicted,
        "clean_cams": clean.cams,
        "cams": after.cams,
        "reference_prob_change": float(after.probs[reference] - clean.probs[reference]),
        "max_pixel_change": int(np.abs(perturbed.astype(np.int16) - image.astype(np.int16)).max()),
    }
