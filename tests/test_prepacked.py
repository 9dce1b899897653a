"""Spec for the prepacked CPU engine (``insight.prepacked``): the same logits, activations and
Grad-CAM as the autograd reference ``GradCamPass`` (itself held to Captum in test_explain), on
the shapes the explorer never sends as well as the one it does, and a fall-back to autograd,
with the reason, wherever the engine cannot run or would not agree.

Runs on a random-init model with random BatchNorm parameters and statistics (seeded)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from conftest import nonidentity_resnet50
from insight import gradcam, prepacked
from resnet import STAGE_NAMES, resnet50

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_torch_thread):
    """One torch thread for the whole module (conftest's ``single_torch_thread``)."""


@pytest.fixture(scope="module")
def model(single_torch_thread):
    return nonidentity_resnet50().requires_grad_(False)


@pytest.fixture(scope="module")
def net(model):
    return prepacked.PrepackedResNet(model)


def image(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def assert_close(got: torch.Tensor, expected: torch.Tensor, within: float = 1e-4) -> None:
    """Equal to float rounding, relative to the tensor's own scale (two orders of summation)."""
    assert got.shape == expected.shape
    scale = float(expected.abs().max())
    if scale == 0:  # e.g. a class with no positive evidence at a stage: its Grad-CAM is all zero
        assert float(got.abs().max()) < 1e-6
        return
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=within * scale)


# Grad-CAM maps get more room than activations: a pre-activation within rounding of zero
# (these random nets have some at 1e-6 of their layer's peak) flips one ReLU's gradient
# between two correct float32 computations (see insight.prepacked.MAPS_AGREEMENT).
MAPS = prepacked.MAPS_AGREEMENT


@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (3, 3, 32, 32), (2, 3, 36, 36)],
                         ids=["one image as the app sends it", "a batch", "odd stage sizes 36-18-9-5"])
def test_logits_activations_and_every_classs_maps_equal_autograds(model, net, shape):
    x = image(*shape)
    expected, got = gradcam.GradCamPass(model, x), net.run(x)
    assert_close(got.logits, expected.logits)
    assert list(got.features) == ["stem", *STAGE_NAMES]
    for name, act in expected.features.items():
        assert_close(got.features[name], act)
    want, have = expected.cams_of_every_class(), got.cams_of_every_class()
    for name in STAGE_NAMES:
        assert have[name].shape == (10, shape[0], *expected.features[name].shape[2:])
        assert_close(have[name], want[name], MAPS)  # some classes' maps are all zero: compared at the stage's scale
    assert prepacked.disagreement(expected, got) == ""


def test_one_class_per_image_equals_autograd_and_defaults_to_the_prediction(model, net):
    x = image(3, 3, 32, 32, seed=2)
    expected, got = gradcam.GradCamPass(model, x), net.run(x)
    assert torch.equal(got.predicted, expected.predicted)
    for targets in (None, [4, 0, 9], 7):
        want, have = expected.cams(targets), got.cams(targets)
        for name in STAGE_NAMES:
            assert have[name].shape == want[name].shape and (have[name] >= 0).all()
            assert_close(have[name], want[name], MAPS)


def test_the_analysis_the_explorer_shows_is_the_same(model, net):
    x = image(1, 3, 32, 32, seed=3)
    for target in (None, 5):
        want, have = gradcam.analysis_of(gradcam.GradCamPass(model, x), target), gradcam.analysis_of(net.run(x), target)
        assert (have.target, have.predicted) == (want.target, want.predicted)
        np.testing.assert_allclose(have.probs, want.probs, atol=1e-5)
        for name in STAGE_NAMES:
            np.testing.assert_allclose(have.cams[name], want.cams[name], atol=MAPS * float(want.cams[name].max()))


def test_bad_targets_and_a_closed_pass_are_refused(net):
    run = net.run(image(2, 3, 32, 32))
    for bad in ([1, 2, 3], 10, -1):
        with pytest.raises(ValueError):
            run.cams(bad)
    run.close()
    with pytest.raises(RuntimeError, match="closed"):
        run.cams()
    with pytest.raises(ValueError, match="N, 3, H, W"):
        net.run(torch.zeros(3, 32, 32))


def test_concurrent_passes_give_the_sequential_answers(net):
    xs = [image(1, 3, 32, 32, seed=s) for s in range(4)]
    expected = [net.run(x).cams(3) for x in xs]
    got: list = [None] * len(xs)

    def work(i: int) -> None:
        got[i] = net.run(xs[i]).cams(3)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for want, have in zip(expected, got):
        for name in STAGE_NAMES:
            assert torch.equal(want[name], have[name])


def test_the_model_is_left_as_it_was(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prepacked.PrepackedResNet(model).run(image(1, 3, 32, 32)).cams_of_every_class()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training and not any(m._forward_hooks for m in model.modules())


# ----- choosing the engine -------------------------------------------------------------------


def test_a_maker_runs_autograd_until_it_has_chosen_and_both_answer_alike(model):
    maker = prepacked.PassMaker(model)
    assert maker.engine == "autograd" and "not checked yet" in maker.reason
    x = image(1, 3, 32, 32, seed=4)
    before = maker(x)
    assert isinstance(before, gradcam.GradCamPass)
    assert maker.choose() == "prepacked oneDNN" and maker.reason == ""
    after = maker(x)
    assert isinstance(after, prepacked.PrepackedPass)
    assert prepacked.disagreement(before, after) == ""


def test_the_prepacked_engine_is_chosen_where_it_agrees(model):
    maker = prepacked.grad_cam_passes(model)
    assert (maker.engine, maker.reason) == ("prepacked oneDNN", "")
    assert isinstance(maker(image(1, 3, 32, 32)), prepacked.PrepackedPass)


def test_without_onednn_autograd_is_kept_and_says_why(model, monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    maker = prepacked.grad_cam_passes(model)
    assert maker.engine == "autograd" and "no oneDNN" in maker.reason
    assert isinstance(maker(image(1, 3, 32, 32)), gradcam.GradCamPass)


def test_another_stem_keeps_autograd(single_torch_thread):
    maker = prepacked.grad_cam_passes(resnet50(stem="imagenet").eval())
    assert maker.engine == "autograd" and "CIFAR stem" in maker.reason


def test_an_engine_that_disagrees_is_not_used(model, monkeypatch):
    """A wrong kernel (here: a 3x3 conv's bias dropped) must be caught by the check at load."""
    real = prepacked._Spatial.__init__

    def broken(self, conv, side):
        real(self, conv, side)
        if conv.in_channels == 512:
            self.bias = torch.zeros_like(self.bias)

    monkeypatch.setattr(prepacked._Spatial, "__init__", broken)
    maker = prepacked.grad_cam_passes(model)
    assert maker.engine == "autograd" and "disagrees" in maker.reason
    assert isinstance(maker(image(1, 3, 32, 32)), gradcam.GradCamPass)
