"""Why residuals: the plain twin, gradient flow and the lesion study, held to hand-built cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import nonidentity_resnet50
from insight import residuals
from resnet.model import fuse_batchnorm, plain50, resnet50
from resnet.weights import save_weights
from train import ConfigError, TrainConfig, fit, load_cifar10, twin
from train import lesions as lesions_cmd
from train.checkpoint import CHECKPOINT_FILE, HISTORY_FILE, load_checkpoint


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_torch_thread):
    """Tiny runs on one thread, as the other training tests (see conftest)."""


@pytest.fixture(scope="module")
def tiny_data(tiny_cifar):
    return load_cifar10(tiny_cifar.archive)


# ----- the plain twin ---------------------------------------------------------------------------


def test_plain50_is_resnet50_with_every_shortcut_and_projection_removed():
    plain, res = plain50(), resnet50()
    names = set(plain.state_dict())
    assert names == {n for n in res.state_dict() if ".downsample." not in n}
    assert all(not b.has_shortcut and b.downsample is None for b in plain.blocks().values())
    x = torch.randn(2, 3, 32, 32)
    plain.eval()
    block = plain.layer2[1]
    h = torch.randn(2, 512, 16, 16).relu()
    assert torch.equal(block(h), F.relu(block.residual(h))), "a plain block outputs ReLU(F(x))"
    assert plain(x).shape == (2, 10)


def test_plain50_starts_with_the_same_he_init_but_its_last_batchnorm_scales_at_one():
    torch.manual_seed(0)
    res = resnet50()
    torch.manual_seed(0)
    plain = plain50()
    for name, block in plain.blocks().items():
        assert torch.equal(block.bn3.weight, torch.ones_like(block.bn3.weight)), name
        assert torch.equal(res.blocks()[name].bn3.weight, torch.zeros_like(block.bn3.weight)), name
    # Every convolution of both: He init (fan_out), std sqrt(2 / fan_out).
    for net in (res, plain):
        for name in ("conv1", "layer1.0.conv2", "layer3.4.conv3", "layer4.2.conv1"):
            w = net.get_submodule(name).weight.detach()
            fan_out = w.shape[0] * w.shape[2] * w.shape[3]
            assert float(w.std()) == pytest.approx((2 / fan_out) ** 0.5, rel=0.1), name


# ----- lesions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("block", ["layer1.1", "layer3.0", "layer4.2"])
def test_removing_a_branch_equals_zeroing_the_blocks_last_batchnorm_scale_and_bias(block):
    model = nonidentity_resnet50()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad(), model.branches_removed([block]):
        lesioned = model(x)
    bn3 = model.blocks()[block].bn3
    with torch.no_grad():
        bn3.weight.zero_()
        bn3.bias.zero_()
        zeroed = model(x)
    torch.testing.assert_close(lesioned, zeroed, rtol=0, atol=1e-6)


def test_branches_come_back_after_the_lesion_and_unknown_blocks_are_refused():
    model = nonidentity_resnet50()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        with model.branches_removed(["layer2.1"]):
            assert not torch.equal(model(x), before)
        assert torch.equal(model(x), before)
    with pytest.raises(KeyError, match="no block 'layer5.0'"):
        with model.branches_removed(["layer5.0"]):
            pass


def test_one_images_lesions_in_one_batched_pass_equal_one_forward_per_removed_block():
    model = nonidentity_resnet50()
    x = torch.randn(1, 3, 32, 32)
    probs = residuals.lesion_probabilities(model, x)
    assert probs.shape == (17, 10)
    with torch.no_grad():
        np.testing.assert_allclose(probs[0], F.softmax(model(x), 1)[0].numpy(), atol=1e-5)
        for k, name in enumerate(model.blocks(), start=1):
            with model.branches_removed([name]):
                np.testing.assert_allclose(probs[k], F.softmax(model(x), 1)[0].numpy(), atol=1e-5, err_msg=name)


def test_the_served_copy_with_batchnorm_folded_has_the_same_lesions():
    model = nonidentity_resnet50()
    x = torch.randn(1, 3, 32, 32)
    np.testing.assert_allclose(residuals.lesion_probabilities(fuse_batchnorm(model), x),
                               residuals.lesion_probabilities(model, x), atol=1e-4)


def test_the_lesion_study_equals_removing_each_block_and_each_adjacent_pair_by_hand():
    model = nonidentity_resnet50(seed=3)
    images, labels = torch.randn(9, 3, 32, 32), torch.randint(0, 10, (9,))
    study = residuals.lesion_study(model, [(images[:4], labels[:4]), (images[4:], labels[4:])])

    def accuracy(lesion):
        with torch.no_grad(), model.branches_removed(lesion):
            return float((model(images).argmax(1) == labels).double().mean())

    assert study.images == 9 and study.intact == accuracy([])
    assert len(study.single) == 16 and len(study.pairs) == 15
    for name in ("layer1.0", "layer2.3", "layer4.2"):
        assert study.single[name] == accuracy([name])
    assert study.pairs["layer3.5+layer4.0"] == accuracy(["layer3.5", "layer4.0"])
    assert study.reshaping == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]


def test_a_plain_block_that_changes_the_shape_cannot_be_removed_and_one_that_keeps_it_becomes_the_identity():
    model = nonidentity_resnet50(shortcuts=False)
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    study = residuals.lesion_study(model, [(images, labels)])
    assert study.single["layer2.0"] is None and study.pairs["layer1.2+layer2.0"] is None
    assert study.single["layer2.1"] is not None
    h = torch.randn(2, 512, 16, 16).relu()
    assert torch.equal(model.layer2[1].without_branch(h), h)
    with pytest.raises(ValueError, match="cannot be removed"):
        model.layer2[0].without_branch(torch.randn(1, 256, 32, 32))


def test_describe_lesions_reads_its_verdict_from_the_numbers():
    blocks = [f"layer{s}.{i}" for s, n in ((1, 3), (2, 4), (3, 6), (4, 3)) for i in range(n)]
    reshaping = ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    dear = {"blocks": blocks, "intact": 0.9, "images": 2000, "reshaping": reshaping,
            "single": {b: (0.5 if b in reshaping else 0.89) for b in blocks}}
    text = residuals.describe_lesions(dear)
    assert "less than 2 points for 12 of 16 blocks" in text and "as Veit et al. found" in text
    cheap = {**dear, "single": {b: (0.89 if b in reshaping else 0.6) for b in blocks}}
    assert "unlike Veit et al.'s finding" in residuals.describe_lesions(cheap)
    assert "close to chance" not in text
    guessing = {**dear, "intact": 0.12, "single": {b: 0.11 for b in blocks}}
    assert "At 12.0% it is close to chance (10% for 10 classes)" in residuals.describe_lesions(guessing)


# ----- gradient flow ----------------------------------------------------------------------------


def test_gradient_flow_is_the_loss_gradients_norm_at_the_image_and_at_every_blocks_input():
    model = nonidentity_resnet50()
    x = torch.randn(1, 3, 32, 32)
    norms = residuals.gradient_flow(model, x, target=4)
    assert norms.shape == (17,) and (norms > 0).all()
    assert residuals.flow_points(model)[0] == "image" and residuals.flow_points(model)[1] == "layer1.0"
    image = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(image), torch.tensor([4])), image)
    assert norms[0] == pytest.approx(float(grad.norm()), rel=1e-5)
    # At layer4.2's input: only the last block and the head lie after it.
    h = model.layer4[:2](model.layer3(model.layer2(model.layer1(model.forward_stem(x))))).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model.forward_head(model.layer4[2](h)), torch.tensor([4])), h)
    assert norms[-1] == pytest.approx(float(grad.norm()), rel=1e-5)


def test_the_networks_at_initialisation_use_batch_statistics_and_never_change():
    nets = residuals.initial_networks()
    assert list(nets) == ["ResNet-50 at initialisation", "plain-50 at initialisation"]
    before = {name: {k: v.clone() for k, v in net.state_dict().items()} for name, net in nets.items()}
    x = torch.randn(1, 3, 32, 32)
    first = {name: residuals.gradient_flow(net, x, 0) for name, net in nets.items()}
    again = {name: residuals.gradient_flow(net, x, 0) for name, net in residuals.initial_networks().items()}
    for name, net in nets.items():
        assert net.training
        assert all(torch.equal(v, before[name][k]) for k, v in net.state_dict().items()), name
        np.testing.assert_allclose(first[name], again[name], rtol=1e-6)


def test_describe_flow_names_the_steadiest_network_and_says_whether_the_wildest_explodes_or_vanishes():
    flat = np.ones(17)
    exploding = np.r_[1.0, np.geomspace(1000, 1, 16)]
    vanishing = np.r_[1.0, np.geomspace(0.001, 1, 16)]
    text = residuals.describe_flow({"A": flat, "B": exploding})
    assert "1x in A" in text and "1,000x in B" in text
    assert "A keeps it steadiest, B the least (it explodes)" in text
    assert "B the least (it vanishes)" in residuals.describe_flow({"A": flat, "B": vanishing})
    assert "cannot be compared" in residuals.describe_flow({"A": flat, "B": np.zeros(17)})


# ----- training the twins -----------------------------------------------------------------------


def tiny_twin_overrides(tiny_cifar):
    # 40 images a step of 10 at 8-24 px: the shape of the real budget at a fraction of its cost.
    return dict(data=str(tiny_cifar.archive), batch_size=10, min_res=8, eval_images=0, eval_batch_size=30,
                lesion_images=4)


def test_a_plain50_run_trains_and_logs_its_loss_every_few_steps(tiny_cifar, tiny_data, tmp_path):
    cfg = TrainConfig(data=str(tiny_cifar.archive), out=str(tmp_path / "plain"), arch="plain50", epochs=2,
                      batch_size=10, min_res=8, eval_batch_size=30, loss_every=2)
    result = fit(cfg, data=tiny_data, show_progress=False)
    assert result.finished
    history = json.loads((tmp_path / "plain" / HISTORY_FILE).read_text())
    losses = history["losses"]
    assert [row["step"] for row in losses] == list(range(2, 2 * 4 + 1, 2)), "4 steps per epoch here, a row every 2"
    assert all(row["loss"] > 0 for row in losses) and losses[-1]["epoch"] == 2
    ckpt = load_checkpoint(tmp_path / "plain" / CHECKPOINT_FILE)
    assert not any("downsample" in k for k in ckpt["model"]) and ckpt["replay"] is None


@pytest.mark.parametrize("bad", [dict(export_to="assets"), dict(init_from="assets/resnet50_cifar10.safetensors")])
def test_a_plain50_run_is_never_exported_nor_started_from_shipped_weights(bad):
    with pytest.raises(ConfigError, match="plain50"):
        TrainConfig(arch="plain50", **bad)


def test_the_twins_train_alike_and_their_losses_histories_and_lesions_ship_in_one_file(tiny_cifar, tmp_path):
    overrides = tiny_twin_overrides(tiny_cifar)
    asset = twin.run_twins(tmp_path / "runs", tmp_path / "assets", epochs=2, images_per_epoch=40,
                           data_path=overrides.pop("data"), show_progress=False, **overrides)
    written = json.loads((tmp_path / "assets" / twin.TWIN_FILE).read_text())
    assert written == json.loads(json.dumps(asset))
    a, b = (written["twins"][k] for k in ("resnet50", "plain50"))
    assert (a["name"], b["name"]) == ("ResNet-50", "plain-50")
    assert [r["step"] for r in a["losses"]] == [r["step"] for r in b["losses"]], "the same budget for both"
    assert [r["lr"] for r in a["losses"]] == [r["lr"] for r in b["losses"]], "the same schedule for both"
    assert [e["epoch"] for e in a["epochs"]] == [1, 2] and all(e["test_acc"] is not None for e in b["epochs"])
    assert len(a["lesions"]["single"]) == 16 and b["lesions"]["single"]["layer3.0"] is None
    assert a["lesions"]["images"] == b["lesions"]["images"] == 4, "both studied on --lesion-images images"
    assert written["budget"]["epochs"] == 2 and written["budget"]["images_per_epoch"] == 40
    assert sum(written["budget"]["steps_per_resolution"].values()) == 8
    ckpt_a = load_checkpoint(tmp_path / "runs" / "resnet50" / CHECKPOINT_FILE)
    ckpt_b = load_checkpoint(tmp_path / "runs" / "plain50" / CHECKPOINT_FILE)
    assert ckpt_a["config"]["seed"] == ckpt_b["config"]["seed"]
    assert {k: v for k, v in ckpt_a["config"].items() if k not in ("arch", "out")} == \
           {k: v for k, v in ckpt_b["config"].items() if k not in ("arch", "out")}

    # A second call finds both finished and studied: it trains and studies nothing again.
    kept = tmp_path / "runs" / "plain50" / residuals.LESIONS_FILE
    kept.write_text(json.dumps({**json.loads(kept.read_text()), "intact": 0.123}))
    again = twin.run_twins(tmp_path / "runs", tmp_path / "assets", epochs=2, images_per_epoch=40,
                           data_path=str(tiny_cifar.archive), show_progress=False, resume=True, **overrides)
    assert again["twins"]["plain50"]["losses"] == b["losses"]
    assert again["twins"]["plain50"]["training_seconds"] == b["training_seconds"]
    assert again["twins"]["plain50"]["lesions"]["intact"] == 0.123, "the kept study, not a new one"
    resized = twin.run_twins(tmp_path / "runs", tmp_path / "assets", epochs=2, images_per_epoch=40,
                             data_path=str(tiny_cifar.archive), show_progress=False, resume=True,
                             **{**overrides, "lesion_images": 3})
    assert resized["twins"]["plain50"]["lesions"]["images"] == 3, "a kept study of another size is made again"
    assert resized["twins"]["plain50"]["losses"] == b["losses"], "and the twin is not trained again"


def test_the_twin_command_says_what_is_wrong_in_one_line(tmp_path, capsys):
    assert twin.main(["--out", str(tmp_path / "runs"), "--to", str(tmp_path), "--data", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / twin.TWIN_FILE).exists()


def test_the_lesions_command_writes_the_study_tied_to_the_weights(tiny_cifar, tmp_path, capsys):
    weights = save_weights(nonidentity_resnet50(), tmp_path / "w.safetensors", {"source": "test"})
    code = lesions_cmd.main(["--weights", str(weights), "--data", str(tiny_cifar.archive), "--out", str(tmp_path),
                             "--batch-size", "16"])
    assert code == 0, capsys.readouterr().err
    study = json.loads((tmp_path / lesions_cmd.LESIONS_FILE).read_text())
    from insight.atlas import sha256_of

    assert study["weights_sha256"] == sha256_of(weights)
    assert study["images"] == 30 and len(study["single"]) == 16 and len(study["pairs"]) == 15
    assert 0 <= study["intact"] <= 1 and study["precision"] == "float32"
    assert "Removing one branch" in capsys.readouterr().out
    assert lesions_cmd.main(["--weights", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path)]) == 2


def test_the_lesion_subset_is_the_per_epoch_evaluations_subset():
    rows = lesions_cmd.subset_rows(10_000)
    assert len(rows) == 2000 and len(set(rows)) == 2000 and (np.diff(rows) > 0).all()
    assert np.array_equal(lesions_cmd.subset_rows(30), np.arange(30))
