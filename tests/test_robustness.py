"""Robustness probes: corruptions are exact at strength 0, seeded, in range; FGSM attacks in pixel space."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import nonidentity_resnet50
from insight.robustness import (
    SWEEP_KINDS,
    PerturbationError,
    apply_settings,
    blur,
    brightness_contrast,
    default_strengths,
    denormalise,
    fgsm,
    fgsm_image,
    gaussian_noise,
    images_to_pixels,
    normalise,
    occlude,
    patch_box,
    perturb,
    predict_probs,
    probe,
    sweep,
    sweep_images,
)
from resnet.constants import MEAN


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return nonidentity_resnet50(readout_scale=0.05)


def image(seed: int = 0) -> np.ndarray:
    """A smooth-ish random picture with values away from 0 and 255."""
    rng = np.random.default_rng(seed)
    return rng.integers(40, 216, (32, 32, 3), dtype=np.uint8)


def cross_entropy(model: nn.Module, images: np.ndarray, label: int) -> np.ndarray:
    with torch.no_grad():
        logits = model(normalise(images_to_pixels(images)))
    return F.cross_entropy(logits, torch.full((len(logits),), label), reduction="none").numpy()


# ----- corruptions -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", [k for k in SWEEP_KINDS if k != "fgsm"])
def test_every_corruption_is_the_identity_at_strength_zero_and_keeps_dtype_and_shape(kind: str) -> None:
    img = image()
    assert np.array_equal(perturb(img, kind, 0.0), img)
    strong = perturb(img, kind, default_strengths(kind)[-1])
    assert strong.dtype == np.uint8 and strong.shape == img.shape
    assert not np.array_equal(strong, img)


def test_all_settings_at_rest_give_the_image_back() -> None:
    img = image()
    assert np.array_equal(apply_settings(img), img)
    assert apply_settings(img) is not img  # a copy: the caller's image is never aliased


def test_noise_is_seeded_and_has_the_asked_sigma() -> None:
    grey = np.full((32, 32, 3), 128, np.uint8)
    a, b, c = gaussian_noise(grey, 0.05, seed=1), gaussian_noise(grey, 0.05, seed=1), gaussian_noise(grey, 0.05, seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    std = (a.astype(float) - 128).std()
    assert abs(std - 0.05 * 255) < 1.0  # 3072 samples: the std is within ~2% of sigma
    noisy = gaussian_noise(grey, 3.0)
    assert noisy.min() == 0 and noisy.max() == 255  # clipped, not wrapped round


def test_blur_keeps_a_flat_image_flat_and_smooths_edges() -> None:
    flat = np.full((32, 32, 3), 77, np.uint8)
    assert np.array_equal(blur(flat, 2.0), flat)
    checker = ((np.indices((32, 32)).sum(0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, 2)
    smoothed = blur(checker, 1.0)
    assert smoothed.std() < 0.2 * checker.std()
    assert abs(smoothed.mean() - checker.mean()) < 2


def test_brightness_and_contrast_move_pixels_as_documented() -> None:
    grey = np.full((4, 4, 3), 100, np.uint8)
    assert np.all(brightness_contrast(grey, brightness=0.1) == 100 + round(0.1 * 255))
    assert np.all(brightness_contrast(image(), contrast=0.0) == 128)  # (x - .5) * 0 + .5
    assert brightness_contrast(image(), brightness=2.0).min() == 255


def test_occlusion_paints_exactly_the_asked_square() -> None:
    img = image()
    out = occlude(img, x=10, y=20, size=4, fill="black")
    changed = np.any(out != img, axis=2)
    rows, cols = np.nonzero(changed)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (18, 21, 8, 11)  # centred on row 20, column 10
    assert np.all(out[18:22, 8:12] == 0)
    assert np.array_equal(np.delete(out.reshape(-1, 3), np.flatnonzero(changed), 0),
                          np.delete(img.reshape(-1, 3), np.flatnonzero(changed), 0))


def test_occlusion_is_clipped_at_the_border_and_the_dataset_fill_is_zero_after_normalising() -> None:
    assert patch_box((32, 32, 3), 0, 0, 8) == (0, 4, 0, 4)
    out = occlude(image(), 31, 31, 6, fill="dataset")
    assert np.all(out[28:, 28:] == np.rint(np.asarray(MEAN) * 255))
    x = normalise(images_to_pixels(out))
    assert torch.allclose(x[0, :, 28:, 28:], torch.zeros(3, 4, 4), atol=0.01)


@pytest.mark.parametrize("call", [
    lambda: gaussian_noise(image(), -0.1),
    lambda: blur(image(), -1),
    lambda: brightness_contrast(image(), contrast=-1),
    lambda: occlude(image(), 40, 3, 4),
    lambda: occlude(image(), 3, 3, 4, fill="purple"),
    lambda: gaussian_noise(image().astype(np.float32), 0.1),
    lambda: perturb(image(), "rotate", 1.0),
    lambda: default_strengths("fgsm2"),
])
def test_impossible_requests_raise_a_clear_value_error(call) -> None:
    with pytest.raises(PerturbationError):
        call()


# ----- FGSM ------------------------------------------------------------------------------


def test_fgsm_with_epsilon_zero_leaves_the_image_unchanged(model: nn.Module) -> None:
    img = image()
    assert np.array_equal(fgsm_image(model, img, 3, 0.0), img)
    x = normalise(images_to_pixels(img))
    assert torch.equal(fgsm(model, x, 3, 0.0), x)


def test_fgsm_stays_in_the_pixel_epsilon_ball_and_in_range(model: nn.Module) -> None:
    img = image()
    x = normalise(images_to_pixels(img))
    eps = 4 / 255
    adv = denormalise(fgsm(model, x, 3, eps))
    delta = adv - images_to_pixels(img)
    assert delta.abs().max() <= eps + 1e-5
    assert delta.abs().max() >= eps - 1e-5  # a full step, in pixel space on every channel
    assert adv.min() >= -1e-6 and adv.max() <= 1 + 1e-6
    saturated = np.full((32, 32, 3), 255, np.uint8)
    assert fgsm_image(model, saturated, 3, 0.1).max() <= 255  # clamped to valid pixels, not wrapped


def test_fgsm_raises_the_loss_of_the_attacked_class(model: nn.Module) -> None:
    images = np.stack([image(s) for s in range(4)])
    labels = predict_probs(model, images).argmax(1)
    before, after = [], []
    for img, label in zip(images, labels):
        adv = fgsm_image(model, img, int(label), 2 / 255)
        before.append(cross_entropy(model, img[None], int(label))[0])
        after.append(cross_entropy(model, adv[None], int(label))[0])
    before, after = np.array(before), np.array(after)
    assert (after > before).mean() >= 0.75
    assert after.mean() > before.mean()


def test_fgsm_sweep_gives_the_same_images_as_one_captum_call_per_epsilon(model: nn.Module) -> None:
    img = image(1)
    eps = [0.0, 1 / 255, 4 / 255]
    batch = sweep_images(model, img, "fgsm", eps, true_label=2)
    for e, got in zip(eps, batch):
        assert np.array_equal(got, fgsm_image(model, img, 2, e))


def test_fgsm_does_not_change_the_model(model: nn.Module) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fgsm_image(model, image(), 1, 0.05)
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


# ----- sweep and probe -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["noise", "occlusion", "fgsm"])
def test_sweep_reports_one_point_per_strength_starting_from_the_clean_prediction(model: nn.Module, kind: str) -> None:
    img = image(2)
    clean = predict_probs(model, img)[0]
    strengths = default_strengths(kind)[:4]
    points = sweep(model, img, kind, strengths, true_label=5)
    assert [p.strength for p in points] == strengths
    assert points[0].true_prob == pytest.approx(float(clean[5]), abs=1e-5)
    assert points[0].pred == int(clean.argmax())
    for p in points:
        assert 0 <= p.true_prob <= 1 and 0 <= p.pred_prob <= 1 and p.pred_prob >= p.true_prob - 1e-6


def test_sweep_matches_classifying_each_perturbed_image_alone(model: nn.Module) -> None:
    img = image(3)
    points = sweep(model, img, "blur", [0.5, 1.5], true_label=0)
    for p in points:
        alone = predict_probs(model, blur(img, p.strength))[0]
        assert p.true_prob == pytest.approx(float(alone[0]), abs=1e-4)


def test_fgsm_sweep_lowers_the_attacked_class_probability(model: nn.Module) -> None:
    img = image(4)
    label = int(predict_probs(model, img)[0].argmax())
    points = sweep(model, img, "fgsm", [0.0, 2 / 255], true_label=label)
    assert points[1].true_prob < points[0].true_prob


def test_a_sweep_needs_a_valid_label_and_strengths(model: nn.Module) -> None:
    with pytest.raises(PerturbationError):
        sweep(model, image(), "noise", [0.1], true_label=10)
    with pytest.raises(PerturbationError):
        sweep(model, image(), "noise", [], true_label=1)
    with pytest.raises(PerturbationError):
        sweep(model, image(), "fgsm", [-0.1], true_label=1)


def test_probe_at_rest_classifies_the_clean_image_twice_identically(model: nn.Module) -> None:
    img = image()
    out = probe(model, img)
    assert np.array_equal(out["image"], img)
    np.testing.assert_allclose(out["probs"], out["clean_probs"], atol=1e-6)
    assert out["reference"] == out["clean_pred"] == int(out["clean_probs"].argmax())
    assert list(out["top_k"]) == list(out["clean_top_k"])
    assert set(out["cams"]) == set(out["clean_cams"]) == {"layer1", "layer2", "layer3", "layer4"}
    assert out["max_pixel_change"] == 0


def test_probe_applies_the_sliders_and_fgsm_against_the_true_label(model: nn.Module) -> None:
    img = image()
    out = probe(model, img, true_label=7, patch_size=8, patch_x=16, patch_y=16, fill="black", fgsm_epsilon=2 / 255)
    assert out["reference"] == 7
    # The patch was black before the attack, so it is within epsilon of black after it.
    assert out["image"][12:20, 12:20].max() <= 2
    assert out["max_pixel_change"] > 2
    assert out["probs"].shape == (10,)
