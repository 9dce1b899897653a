"""The model is ResNet-50 as in He et al. 2015, written from scratch, and torchvision-compatible."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import nonidentity_resnet50
from resnet import FEATURE_NAMES, STAGE_NAMES, Bottleneck, resnet50


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return nonidentity_resnet50()


def test_parameter_count_with_cifar_stem_is_23_520_842() -> None:
    assert sum(p.numel() for p in resnet50().parameters()) == 23_520_842


def test_bottleneck_layout_is_3_4_6_3_with_expansion_4() -> None:
    m = resnet50()
    assert [len(getattr(m, s)) for s in STAGE_NAMES] == [3, 4, 6, 3]
    assert all(isinstance(b, Bottleneck) for s in STAGE_NAMES for b in getattr(m, s))
    assert [getattr(m, s)[0].conv3.out_channels for s in STAGE_NAMES] == [256, 512, 1024, 2048]
    assert len(m.blocks()) == 16


def test_stride_sits_on_the_3x3_conv_v1_5() -> None:
    block = resnet50().layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert block.downsample is not None and block.downsample[0].stride == (2, 2)
    # Identity shortcut where the shape does not change: no extra parameters.
    assert resnet50().layer2[1].downsample is None


def test_logits_shape_for_both_stems() -> None:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert resnet50().eval()(x).shape == (2, 10)
        assert resnet50(num_classes=7, stem="imagenet").eval()(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def test_imagenet_stem_is_the_papers_7x7_stride_2_with_max_pool() -> None:
    m = resnet50(stem="imagenet")
    assert m.conv1.kernel_size == (7, 7) and m.conv1.stride == (2, 2)
    assert isinstance(m.maxpool, nn.MaxPool2d)
    cifar = resnet50()
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity)


def test_unknown_stem_is_refused() -> None:
    with pytest.raises(ValueError, match="stem"):
        resnet50(stem="tiny")  # type: ignore[arg-type]


def test_state_dict_loads_strictly_into_torchvision_and_gives_the_same_logits(model: nn.Module) -> None:
    torchvision = pytest.importorskip("torchvision")
    tv = torchvision.models.resnet50(num_classes=10)
    tv.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    tv.maxpool = nn.Identity()
    tv.load_state_dict(model.state_dict(), strict=True)
    tv.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours, theirs = model(x), tv(x)
    assert ours.abs().max() > 1.0  # the comparison means something
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("stem,size", [("cifar", 32), ("imagenet", 64)])
def test_intermediates_match_feature_info(stem: str, size: int) -> None:
    m = nonidentity_resnet50(stem=stem)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        out = m.forward_intermediates(x)
        logits = m(x)
    assert list(out.features) == list(FEATURE_NAMES) == [f.name for f in m.feature_info]
    for info in m.feature_info:
        feat = out.features[info.name]
        assert feat.shape == (1, info.channels, size // info.stride, size // info.stride), info
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(m.forward_head(out.features["layer4"]), logits)


def test_cifar_stage_resolutions_are_32_16_8_4() -> None:
    m = resnet50().eval()
    with torch.no_grad():
        feats = m.forward_intermediates(torch.randn(1, 3, 32, 32)).features
    assert [feats[s].shape[-1] for s in STAGE_NAMES] == [32, 16, 8, 4]


def test_block_anatomy_sums_up(model: nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, anatomies = model.block_anatomies(x)
        torch.testing.assert_close(logits, model(x))
    assert [a.name for a in anatomies] == list(model.blocks())
    for a, block in zip(anatomies, model.blocks().values()):
        torch.testing.assert_close(a.residual + a.shortcut, a.sum)
        torch.testing.assert_close(torch.relu(a.sum), a.output)
        with torch.no_grad():
            torch.testing.assert_close(block(a.input), a.output)
    # Each block's output is the next block's input.
    for prev, nxt in zip(anatomies, anatomies[1:]):
        assert prev.output is nxt.input
    # A projection shortcut changes shape, an identity one does not.
    assert anatomies[3].name == "layer2.0" and anatomies[3].shortcut.shape != anatomies[3].input.shape
    assert anatomies[4].shortcut is anatomies[4].input  # layer2.1


def test_single_block_anatomy_by_index_or_name_matches_the_full_pass(model: nn.Module) -> None:
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        _, every = model.block_anatomies(x)
        by_index = model.block_anatomy(x, 9)
        by_name = model.block_anatomy(x, "layer3.2")
    assert by_index.name == by_name.name == "layer3.2"
    torch.testing.assert_close(by_index.residual, every[9].residual)
    torch.testing.assert_close(by_name.output, every[9].output)
    with pytest.raises(KeyError, match="layer5.0"):
        model.block_anatomy(x, "layer5.0")


def test_zero_init_makes_every_block_start_as_identity_plus_relu() -> None:
    m = resnet50().eval()
    assert all(float(b.bn3.weight.detach().abs().sum()) == 0 for b in m.blocks().values())
    with torch.no_grad():
        _, anatomies = m.block_anatomies(torch.randn(1, 3, 32, 32))
    for a in anatomies:
        assert float(a.residual.abs().max()) == 0.0
    assert all(float(b.bn3.weight.detach().abs().sum()) > 0 for b in resnet50(zero_init_residual=False).blocks().values())


def test_convs_use_kaiming_fan_out_init() -> None:
    torch.manual_seed(0)
    w = resnet50().layer3[0].conv2.weight.detach()  # 256 out channels, 3x3: fan_out = 2304
    expected_std = (2.0 / (256 * 9)) ** 0.5
    assert abs(float(w.std()) - expected_std) / expected_std < 0.05


def test_a_model_about_to_be_loaded_skips_the_he_init_and_loads_the_same() -> None:
    torch.manual_seed(0)
    trained = resnet50(zero_init_residual=False).eval()
    bare = resnet50(init_weights=False)
    assert all(float(b.bn3.weight.detach().min()) == 1.0 for b in bare.blocks().values())  # torch's default, not zero-init
    bare.load_state_dict(trained.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(bare.eval()(x), trained(x))


def test_every_relu_is_its_own_non_inplace_module() -> None:
    m = resnet50()
    relus = [mod for mod in m.modules() if isinstance(mod, nn.ReLU)]
    assert len(relus) == 1 + 16 * 3
    assert len({id(r) for r in relus}) == len(relus)
    assert not any(r.inplace for r in relus)


def test_gradients_reach_every_stage_through_hooks_free_api(model: nn.Module) -> None:
    x = torch.randn(1, 3, 32, 32)
    out = model.forward_intermediates(x)
    stages = [out.features[s] for s in STAGE_NAMES]
    grads = torch.autograd.grad(out.logits[0, 3], stages)
    assert all(g.shape == s.shape and g.abs().sum() > 0 for g, s in zip(grads, stages))
