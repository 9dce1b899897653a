"""Spec for the explanation functions: Grad-CAM at every stage, feature maps,
residual-block anatomy and the second attribution method.

Runs on a random-init model (seeded), so nothing depends on the shipped
weights or their accuracy.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from captum.attr import LayerGradCam

from insight import activations, anatomy, architecture, captum_reference, contrast, gradcam, render
from resnet import CLASSES, STAGE_NAMES, resnet50


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_torch_thread):
    """One torch thread for the whole module (conftest's ``single_torch_thread``)."""


@pytest.fixture(scope="module")
def model(single_torch_thread):
    torch.manual_seed(0)
    # zero_init_residual=False: with zero-init every block is the identity and
    # Grad-CAM of later stages would be a trivial function of earlier ones.
    m = resnet50(zero_init_residual=False).eval()
    # Random BN statistics give the untrained net varied, class-dependent logits.
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0, 0.1)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
    return m


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(1, 3, 32, 32, generator=g) for _ in range(3)]


def reference_gradcam(model, x, target, stage):
    return LayerGradCam(model, getattr(model, stage)).attribute(x, target=target, relu_attributions=True)[0, 0].detach().numpy()


# ----- Grad-CAM at every stage --------------------------------------------------------------


def test_one_call_gives_a_map_per_stage_at_its_resolution(model, images):
    a = gradcam.analyze(model, images[0])
    assert list(a.cams) == list(STAGE_NAMES)
    assert {k: v.shape for k, v in a.cams.items()} == {"layer1": (32, 32), "layer2": (16, 16), "layer3": (8, 8), "layer4": (4, 4)}
    for cam in a.cams.values():
        assert cam.dtype == np.float32 and np.isfinite(cam).all() and (cam >= 0).all()
    assert any(cam.max() > 0 for cam in a.cams.values())


@pytest.mark.parametrize("target", [None, 0, 7])
def test_equals_captum_layergradcam_run_layer_by_layer(model, images, target):
    x = images[1]
    a = gradcam.analyze(model, x, target)
    for stage in STAGE_NAMES:
        ref = reference_gradcam(model, x, a.target, stage)
        np.testing.assert_allclose(a.cams[stage], ref, rtol=1e-5, atol=1e-7 * max(1.0, float(ref.max())))


def test_default_target_is_the_prediction_and_probs_match_the_model(model, images):
    x = images[2]
    a = gradcam.analyze(model, x)
    with torch.no_grad():
        probs = torch.softmax(model(x), 1)[0].numpy()
    np.testing.assert_allclose(a.probs, probs, rtol=1e-5, atol=1e-6)
    assert a.target == a.predicted == int(probs.argmax())
    assert abs(float(a.probs.sum()) - 1.0) < 1e-5


def test_maps_change_with_the_target_class(model, images):
    x = images[0]
    a, b = gradcam.analyze(model, x, 1), gradcam.analyze(model, x, 8)
    assert a.target == 1 and b.target == 8
    assert any(not np.allclose(a.cams[s], b.cams[s]) for s in STAGE_NAMES)
    # The prediction does not depend on which class is explained.
    np.testing.assert_allclose(a.probs, b.probs, rtol=1e-6)


def test_features_are_the_stem_and_stage_outputs(model, images):
    x = images[0]
    a = gradcam.analyze(model, x)
    with torch.no_grad():
        inter = model.forward_intermediates(x)
    for name, tensor in inter.features.items():
        np.testing.assert_allclose(a.features[name], tensor[0].numpy(), rtol=1e-5, atol=1e-6)
    assert {k: v.shape[0] for k, v in a.features.items()} == {f.name: f.channels for f in model.feature_info}


def test_stage_features_equal_what_analyze_keeps(model, images):
    x = images[0]
    kept = gradcam.analyze(model, x).features
    plain = activations.stage_features(model, x)
    assert list(plain) == list(kept)
    for name in kept:
        np.testing.assert_allclose(plain[name], kept[name], rtol=1e-5, atol=1e-6)


def test_gradcam_all_stages_contract(model, images):
    g = gradcam.gradcam_all_stages(model, images[0], 3)
    assert g.target == 3 and g.probs.shape == (len(CLASSES),)
    assert set(g.maps) == set(STAGE_NAMES)


def test_bad_arguments_raise_value_error(model, images):
    for target in (-1, 10, 2.5, "cat", True):
        with pytest.raises(ValueError):
            gradcam.analyze(model, images[0], target)
    with pytest.raises(ValueError):
        gradcam.analyze(model, torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError):
        gradcam.analyze(model, torch.zeros(3, 32, 32))


def test_leaves_no_hooks_and_no_gradients_on_the_model(model, images):
    gradcam.analyze(model, images[0], 2)
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
    assert all(p.grad is None for p in model.parameters())


def test_works_inside_inference_mode(model, images):
    with torch.inference_mode():
        a = gradcam.analyze(model, images[0], 4)
    np.testing.assert_allclose(a.cams["layer3"], gradcam.analyze(model, images[0], 4).cams["layer3"], rtol=1e-6)


def test_concurrent_calls_give_the_sequential_answers(model, images):
    jobs = [(x, t) for x in images for t in (None, 5)]
    expected = [gradcam.analyze(model, x, t) for x, t in jobs]
    results: list = [None] * len(jobs)

    def run(i):
        results[i] = gradcam.analyze(model, *jobs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, expected):
        assert got.target == want.target
        for s in STAGE_NAMES:
            np.testing.assert_allclose(got.cams[s], want.cams[s], rtol=1e-5, atol=1e-9)


def test_top_k():
    probs = np.array([0.05, 0.3, 0.1, 0.02, 0.2, 0.08, 0.1, 0.05, 0.06, 0.04], dtype=np.float32)
    top = gradcam.top_k(probs, 3)
    assert list(top) == ["automobile", "deer", "bird"]
    assert top["automobile"] == pytest.approx(0.3)
    assert len(gradcam.top_k(probs, 99)) == 10 and len(gradcam.top_k(probs, 0)) == 1


# ----- pictures -----------------------------------------------------------------------------


def test_upsample_is_smooth_and_keeps_constants():
    assert render.upsample(np.full((4, 4), 2.0, np.float32), 32).shape == (32, 32)
    np.testing.assert_allclose(render.upsample(np.full((4, 4), 2.0, np.float32), 32), 2.0)
    peak = np.zeros((4, 4), np.float32)
    peak[1, 1] = 1.0
    up = render.upsample(peak, 32)
    assert len(np.unique(np.round(up, 4))) > 10  # bilinear, not 4 flat blocks


def test_jet_runs_blue_to_red():
    lo, hi = render.jet(np.array([0.0, 1.0]))
    assert lo[2] > 100 and lo[0] == 0  # dark blue
    assert hi[0] > 100 and hi[2] == 0  # dark red


def test_overlay_opacity_and_scale():
    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    cam = np.random.default_rng(1).random((8, 8)).astype(np.float32)
    out = render.overlay(img, cam, opacity=0.0, size=256)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(np.repeat(img, 8, 0), 8, 1))  # nearest-neighbour base
    full = render.overlay(img, cam, opacity=1.0)
    np.testing.assert_array_equal(full, render.jet(render.upsample(cam, 32) / cam.max()))
    np.testing.assert_array_equal(render.overlay(img, cam, 0.5), render.overlay(img, cam, 0.5, vmax=float(cam.max())))
    dimmer = render.overlay(img, cam, 1.0, vmax=4 * float(cam.max()))
    assert dimmer[..., 0].mean() < full[..., 0].mean()  # a shared, larger scale makes this map cooler
    assert render.overlay(img, np.zeros((4, 4), np.float32), 0.5).shape == (32, 32, 3)
    with pytest.raises(ValueError):
        render.overlay(img, cam, opacity=1.5)


# ----- feature maps and residual blocks -------------------------------------------------------


def test_top_channels_ranks_by_mean_activation():
    act = np.zeros((6, 4, 4), np.float32)
    for c, v in enumerate([0.1, 5.0, 0.0, 3.0, 4.0, 0.2]):
        act[c] = v
    top = activations.top_channels(act, 3)
    assert top.indices.tolist() == [1, 4, 3]
    np.testing.assert_array_equal(top.maps, act[[1, 4, 3]])
    assert top.means.tolist() == [5.0, 4.0, 3.0]
    assert len(activations.top_channels(act, 100).indices) == 6
    with pytest.raises(ValueError):
        activations.top_channels(act[0], 2)


def test_block_anatomy_parts_add_up(model, images):
    x = images[0]
    r = anatomy.residual_anatomy(model, x, "layer2.0")
    assert r.names[0] == "layer1.0" and r.names[-1] == "layer4.2" and len(r.names) == len(r.ratios) == 16
    assert list(r.maps) == list(anatomy.ANATOMY_PARTS) and r.block == "layer2.0" and r.channel is None
    m = r.maps
    np.testing.assert_allclose(m["F(x) + x"], m["shortcut x"] + m["F(x)"], rtol=1e-4, atol=1e-5)
    assert m["shortcut x"].shape == (16, 16) and r.channels == 512

    with torch.no_grad():
        a = model.block_anatomy(x, "layer2.0")
    want = float(a.residual.norm() / a.shortcut.norm())
    assert r.ratios[r.names.index("layer2.0")] == pytest.approx(want, rel=1e-4)
    one = anatomy.residual_anatomy(model, x, 4, channel=7)  # index 4 = layer2.1
    assert one.block == "layer2.1" and one.channel == 7
    np.testing.assert_allclose(one.maps["ReLU(F(x) + x)"], model.block_anatomy(x, 4).output[0, 7].detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(one.maps["ReLU(F(x) + x)"], np.maximum(one.maps["F(x) + x"], 0), rtol=1e-5, atol=1e-6)


def test_zero_init_blocks_change_nothing(images):
    torch.manual_seed(0)
    fresh = resnet50(zero_init_residual=True).eval()
    r = anatomy.residual_anatomy(fresh, images[0], 5)
    np.testing.assert_allclose(r.ratios, 0.0, atol=1e-7)
    np.testing.assert_allclose(r.maps["F(x)"], 0.0, atol=1e-7)


def test_block_anatomy_rejects_bad_choices(model, images):
    for block in (16, -1, "layer5.0"):
        with pytest.raises(ValueError):
            anatomy.residual_anatomy(model, images[0], block)
    with pytest.raises(ValueError):
        anatomy.residual_anatomy(model, images[0], "layer1.0", channel=256)


# ----- the contrast method -------------------------------------------------------------------


@pytest.mark.parametrize("method", contrast.CONTRAST_METHODS)
def test_contrast_map(model, images, method):
    out = contrast.contrast_map(model, images[0], 3, method)
    assert out.shape == (32, 32) and out.dtype == np.float32 and (out >= 0).all() and out.max() > 0
    other = contrast.contrast_map(model, images[0], 6, method)
    assert not np.allclose(out, other)


def test_contrast_map_rejects_unknown_method(model, images):
    with pytest.raises(ValueError, match="method"):
        contrast.contrast_map(model, images[0], 3, "LIME")


# ----- the architecture table ----------------------------------------------------------------


def test_architecture_table_is_computed_from_the_model(model):
    rows = architecture.architecture_table(model)
    assert [r["stage"] for r in rows] == ["stem", *STAGE_NAMES, "head"]
    assert [r["blocks"] for r in rows] == [0, 3, 4, 6, 3, 0]
    assert [r["output_shape"] for r in rows] == [(64, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8), (2048, 4, 4), (10,)]
    assert sum(r["parameters"] for r in rows) == sum(p.numel() for p in model.parameters()) == 23_520_842


def test_works_with_frozen_weights(images):
    torch.manual_seed(0)
    frozen = resnet50(zero_init_residual=False).eval().requires_grad_(False)
    a = gradcam.analyze(frozen, images[0], 4)
    for s in STAGE_NAMES:
        np.testing.assert_allclose(a.cams[s], reference_gradcam(frozen, images[0], 4, s), rtol=1e-5, atol=1e-9)
    assert any(cam.max() > 0 for cam in a.cams.values())


def test_predict_probs_is_the_softmax_of_one_forward(model, images):
    with torch.no_grad():
        want = torch.softmax(model(images[1]), 1)[0].numpy()
    np.testing.assert_allclose(gradcam.predict_probs(model, images[1]), want, rtol=1e-5, atol=1e-7)


# ----- one forward, any class: GradCamPass --------------------------------------------------


def _count_forwards(model) -> list[int]:
    calls = [0]
    model.conv1.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_a_kept_pass_answers_every_class_without_running_the_network_again(images):
    from conftest import nonidentity_resnet50

    model = nonidentity_resnet50(readout_scale=0.05)
    calls = _count_forwards(model)
    run = gradcam.GradCamPass(model, images[1])
    assert calls[0] == 1
    for target in (0, 3, 9):
        maps = run.cams(target)
        for stage in STAGE_NAMES:
            ref = reference_gradcam(model, images[1], target, stage)
            np.testing.assert_allclose(maps[stage][0].numpy(), ref, rtol=1e-5, atol=1e-7 * max(1.0, float(ref.max())))
    assert calls[0] == 1 + 3 * 4  # only the reference (Captum, one forward per stage and class) ran the network
    run.close()
    with pytest.raises(RuntimeError, match="closed"):
        run.cams(0)


def test_a_batch_gets_each_image_its_own_class_in_one_backward(model, images):
    x = torch.cat(images)
    run = gradcam.GradCamPass(model, x)
    targets = [2, 5, 8]
    maps = run.cams(targets)
    for i, (image, target) in enumerate(zip(images, targets)):
        alone = gradcam.analyze(model, image, target)
        for stage in STAGE_NAMES:
            # A batch of 3 and a batch of 1 may run different convolution kernels: equal up to
            # float32 summation order, measured against the map's own scale.
            scale = float(np.abs(alone.cams[stage]).max())
            np.testing.assert_allclose(maps[stage][i].numpy(), alone.cams[stage], rtol=1e-4, atol=2e-3 * scale)
    np.testing.assert_array_equal(run.predicted.numpy(), run.logits.argmax(1).numpy())
    assert run.block_ratios is None  # asked for only where they are used (the replay)
    ratios = anatomy.residual_anatomy(model, images[0]).ratios
    with_ratios = gradcam.GradCamPass(model, x, block_ratios=True)
    np.testing.assert_allclose(with_ratios.block_ratios[0].numpy(), ratios, rtol=1e-5)
    np.testing.assert_allclose(with_ratios.cams(targets)["layer1"].numpy(), maps["layer1"].numpy(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="one target per image"):
        run.cams([1, 2])
    with pytest.raises(ValueError, match="class indices"):
        run.cams([1, 2, 10])


def test_the_reference_captum_path_gives_the_same_maps(model, images):
    ours = gradcam.analyze(model, images[2], 6).cams
    theirs = captum_reference.captum_gradcam(model, images[2], 6)
    for stage in STAGE_NAMES:
        np.testing.assert_allclose(ours[stage], theirs[stage], rtol=1e-5, atol=1e-7 * max(1.0, float(theirs[stage].max())))


def test_batchnorm_folded_into_the_convolutions_computes_the_same_explanations(images):
    from conftest import nonidentity_resnet50
    from resnet.model import fuse_batchnorm

    model = nonidentity_resnet50(readout_scale=0.05)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_batchnorm(model).to(memory_format=torch.channels_last)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched
    x = images[0]
    with torch.no_grad():
        torch.testing.assert_close(fused(x.contiguous(memory_format=torch.channels_last)), model(x), rtol=1e-4, atol=1e-4)
    a, b = gradcam.analyze(model, x, 4), gradcam.analyze(fused, x, 4)
    for stage in STAGE_NAMES:
        # Grad-CAM sums signed products, so rounding shows on its smallest cells: compare on the map's scale.
        np.testing.assert_allclose(b.cams[stage], a.cams[stage], rtol=1e-2, atol=1e-3 * float(a.cams[stage].max()))
    ra, rb = anatomy.residual_anatomy(model, x, "layer3.1"), anatomy.residual_anatomy(fused, x, "layer3.1")
    np.testing.assert_allclose(rb.ratios, ra.ratios, rtol=1e-3)
    for part in anatomy.ANATOMY_PARTS:
        np.testing.assert_allclose(rb.maps[part], ra.maps[part], rtol=1e-3, atol=1e-4)


def test_every_class_at_once_equals_one_class_at_a_time(model, images):
    run = gradcam.GradCamPass(model, torch.cat(images[:2]))
    every = run.cams_of_every_class()
    for c in (0, 4, 9):
        one = run.cams(c)
        for stage in STAGE_NAMES:
            assert every[stage].shape[:2] == (10, 2)
            top = float(one[stage].max())  # on the map's scale: a batched backward sums in another order
            np.testing.assert_allclose(every[stage][c].numpy(), one[stage].numpy(), rtol=1e-4, atol=1e-5 * top)
