"""Model-randomisation sanity check (Adebayo et al. 2018): copies, not mutations; honest rank correlation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import nonidentity_resnet50
from insight.gradcam import gradcam_all_stages
from insight.sanity import (
    SanityError,
    compare_maps,
    pearson,
    randomise_last_stage,
    randomise_stages,
    rankdata,
    sanity_check,
    spearman,
    top_overlap,
    verdict,
)
from resnet import STAGE_NAMES


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return nonidentity_resnet50(readout_scale=0.05)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def snapshot(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


# ----- rank correlation --------------------------------------------------------------------


def test_spearman_matches_a_hand_computed_example() -> None:
    # ranks 1 2 3 4 vs 1 3 2 4: sum d^2 = 2, rho = 1 - 6 * 2 / (4 * (16 - 1)) = 0.8
    assert spearman(np.array([10, 20, 30, 40]), np.array([1, 3, 2, 4])) == pytest.approx(0.8)


def test_spearman_gives_ties_their_average_rank() -> None:
    assert rankdata(np.array([7, 3, 3, 9, 3])).tolist() == [4.0, 2.0, 2.0, 5.0, 2.0]
    # ranks 1 2.5 2.5 4 vs 1 2 3 4: 4.5 / sqrt(4.5 * 5)
    assert spearman(np.array([1, 2, 2, 3]), np.array([1, 2, 3, 4])) == pytest.approx(4.5 / np.sqrt(22.5))


def test_spearman_sees_only_the_order() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((4, 4))
    assert spearman(a, np.exp(5 * a)) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert pearson(a, np.exp(5 * a)) < 1.0 - 1e-3  # Pearson does care about the shape of the curve


def test_a_flat_map_has_no_rank_correlation() -> None:
    flat, ramp = np.zeros((4, 4)), np.arange(16.0).reshape(4, 4)
    assert np.isnan(spearman(flat, ramp))
    vanished = compare_maps({"layer4": ramp}, {"layer4": flat})["layer4"]
    assert vanished["randomised_flat"] and not vanished["trained_flat"]
    assert "vanishes" in verdict(vanished) and "passes" in verdict(vanished)
    assert "nothing to compare" in verdict(compare_maps({"layer4": flat}, {"layer4": ramp})["layer4"])
    assert "undefined" in verdict({"spearman": float("nan")})
    with pytest.raises(SanityError):
        spearman(np.zeros(4), np.zeros(5))


def test_the_verdict_reads_the_sign_of_the_rank_correlation() -> None:
    ramp = np.arange(16.0).reshape(4, 4)
    same = compare_maps({"layer4": ramp}, {"layer4": ramp ** 2})["layer4"]
    inverted = compare_maps({"layer4": ramp}, {"layer4": -ramp + 16})["layer4"]
    unrelated = {"spearman": 0.1}
    assert "survives" in verdict(same) and "passes" not in verdict(same)
    assert "inverts" in verdict(inverted) and "passes" in verdict(inverted)
    assert "changes" in verdict(unrelated) and "passes" in verdict(unrelated)


def test_top_overlap_is_one_for_the_same_hot_spot_and_zero_for_disjoint_ones() -> None:
    a = np.zeros((5, 5))
    a[0, 0] = 1
    b = np.zeros((5, 5))
    b[4, 4] = 1
    assert top_overlap(a, a * 3, fraction=0.04) == 1.0
    assert top_overlap(a, b, fraction=0.04) == 0.0


# ----- randomisation ----------------------------------------------------------------------


def test_randomising_the_last_stage_changes_layer4_only_and_leaves_the_model_alone(model: nn.Module) -> None:
    before = snapshot(model)
    rand = randomise_last_stage(model, seed=0)
    after = rand.state_dict()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the shared model is untouched
    for key, value in after.items():
        if key.startswith("layer4.") and key.endswith("conv2.weight"):
            assert not torch.equal(value, before[key]), key
        if not key.startswith("layer4."):
            assert torch.equal(value, before[key]), key  # stem, layer1..3 and fc keep their trained values
    assert rand.layer4[0].conv1.weight.data_ptr() != model.layer4[0].conv1.weight.data_ptr()


def test_randomised_blocks_are_not_identities(model: nn.Module) -> None:
    rand = randomise_last_stage(model)
    for block in rand.layer4:
        # The model's zero-init of the last BN would make a "random" block pass x straight through.
        assert torch.all(block.bn3.weight == 1)
        assert torch.all(block.bn3.running_var == 1)


def test_randomisation_is_seeded(model: nn.Module) -> None:
    a = randomise_last_stage(model, seed=3).layer4[1].conv2.weight
    b = randomise_last_stage(model, seed=3).layer4[1].conv2.weight
    c = randomise_last_stage(model, seed=4).layer4[1].conv2.weight
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cascading_randomisation_extends_the_previous_step(model: nn.Module) -> None:
    one = randomise_stages(model, ("layer4",), seed=0)
    two = randomise_stages(model, ("layer4", "layer3"), seed=0)
    assert torch.equal(one.layer4[2].conv3.weight, two.layer4[2].conv3.weight)
    assert not torch.equal(two.layer3[0].conv1.weight, model.layer3[0].conv1.weight)
    assert torch.equal(two.layer2[0].conv1.weight, model.layer2[0].conv1.weight)


def test_unknown_stages_are_refused(model: nn.Module, x: torch.Tensor) -> None:
    with pytest.raises(SanityError, match="layer5"):
        randomise_stages(model, ("layer5",))
    with pytest.raises(SanityError):
        sanity_check(model, x, stages=())
    with pytest.raises(SanityError):
        sanity_check(model, x, stages=("layer4", "layer4"))
    with pytest.raises(SanityError):
        sanity_check(model, torch.zeros(2, 3, 32, 32))


# ----- the check ------------------------------------------------------------------------------


def test_sanity_check_compares_the_same_class_before_and_after(model: nn.Module, x: torch.Tensor) -> None:
    before = snapshot(model)
    trained = gradcam_all_stages(model, x, None)
    result = sanity_check(model, x, target=None, stages=("layer4", "layer3"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result["target"] == trained.target
    for stage in STAGE_NAMES:
        np.testing.assert_allclose(result["trained"]["maps"][stage], trained.maps[stage], rtol=1e-5, atol=1e-7)
    assert [s["randomised"] for s in result["steps"]] == [["layer4"], ["layer4", "layer3"]]
    for step in result["steps"]:
        assert set(step["metrics"]) == set(STAGE_NAMES)
        for stage, m in step["metrics"].items():
            assert step["maps"][stage].shape == trained.maps[stage].shape
            assert np.isnan(m["spearman"]) or -1 <= m["spearman"] <= 1
            assert 0 <= m["top_overlap"] <= 1
        assert not np.allclose(step["probs"], result["trained"]["probs"])


def test_randomising_layer4_changes_its_grad_cam(model: nn.Module, x: torch.Tensor) -> None:
    result = sanity_check(model, x, target=3, stages=("layer4",))
    step = result["steps"][0]
    assert result["target"] == 3
    assert not np.allclose(step["maps"]["layer4"], result["trained"]["maps"]["layer4"])
    assert step["metrics"]["layer4"]["spearman"] < 0.999


def test_a_map_compared_with_itself_passes_nothing() -> None:
    maps = {"layer4": np.random.default_rng(0).random((4, 4))}
    metrics = compare_maps(maps, maps)["layer4"]
    assert (metrics["spearman"], metrics["pearson"], metrics["top_overlap"]) == pytest.approx((1.0, 1.0, 1.0))
    assert not metrics["trained_flat"] and not metrics["randomised_flat"]
    assert "survives" in verdict(metrics) and "depends on what the model learned" in verdict({"spearman": 0.1})
