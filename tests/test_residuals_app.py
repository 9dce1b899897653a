"""The Why residuals tab through the API: the twins' file and the lesion study as shipped, gradient
flow and lesions for an image equal to what the model computes here, and bad requests refused with a
sentence while the server keeps serving.

Expected values are read from the asset files or computed in this process, never hard-coded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from insight import residuals
from resnet import CLASSES

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
CAT = ASSETS / "samples" / "cat_0.png"


def upload(path: Path = CAT):
    from gradio_client import handle_file

    return handle_file(str(path))


def plot_data(plot) -> list[dict]:
    return (json.loads(plot["plot"]) if isinstance(plot["plot"], str) else plot["plot"])["data"]


@pytest.fixture(scope="module")
def served():
    """The served model and an image's input as the server makes them, in this process."""
    from explorer.cache import model_input
    from explorer.context import SERVING
    from resnet import preprocess

    def x_of(path: Path):
        return model_input(preprocess.to_model_input(preprocess.load_image(path)).seen)

    return SERVING, x_of


def test_the_three_views_have_named_endpoints(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/gradient_flow", "/lesion", "/plain_vs_residual"} <= names
    assert "/residuals_this_image" not in names, "the tab's own glue stays private"


def test_plain_vs_residual_shows_the_shipped_twins_and_lesion_study(client):
    twins = json.loads((ASSETS / residuals.TWIN_FILE).read_text())
    study = json.loads((ASSETS / residuals.LESIONS_FILE).read_text())
    twin_md, twin_plot, study_md, study_plot, pairs, numbers = client.predict(api_name="/plain_vs_residual")
    for record in twins["twins"].values():
        assert f"{record['epochs'][-1]['test_acc']:.1%}" in twin_md and record["name"] in twin_md
    assert f"{twins['budget']['epochs']} epochs of {twins['budget']['images_per_epoch']:,}" in twin_md
    traces = plot_data(twin_plot)
    loss = next(t for t in traces if t["name"] == "ResNet-50: training loss")
    assert loss["y"] == pytest.approx([r["loss"] for r in twins["twins"]["resnet50"]["losses"]])
    bars = next(t for t in plot_data(study_plot) if t["type"] == "bar")
    expected = [(study["intact"] - study["single"][n]) * 100 for n in study["blocks"]]
    assert bars["y"] == pytest.approx(expected)
    assert len(pairs["data"]) == 15 and numbers["served"]["intact"] == study["intact"]
    assert numbers["plain_twin"] == twins["twins"]["plain50"]["lesions"]
    assert residuals.describe_lesions(study) in study_md


def test_gradient_flow_is_computed_for_the_image_and_class_asked(client, served):
    model, x_of = served
    plot, text, numbers = client.predict(upload(), "dog", api_name="/gradient_flow")
    assert numbers["class"] == "dog" and len(numbers["points"]) == 17
    got = numbers["norms"]
    assert list(got) == ["served model", "ResNet-50 at initialisation", "plain-50 at initialisation"]
    expected = {"served model": residuals.gradient_flow(model, x_of(CAT), CLASSES.index("dog"))}
    for name, net in residuals.initial_networks().items():
        expected[name] = residuals.gradient_flow(net, x_of(CAT).contiguous(), CLASSES.index("dog"))
    for name, norms in expected.items():
        assert got[name] == pytest.approx(norms.tolist(), rel=1e-3), name
    assert residuals.describe_flow({n: np.array(v) for n, v in got.items()}) in text
    assert [t["name"] for t in plot_data(plot)] == list(got)


def test_a_lesion_gives_the_top1_and_its_probability_without_that_branch(client, served):
    model, x_of = served
    probs = residuals.lesion_probabilities(model, x_of(CAT))
    plot, text, numbers = client.predict(upload(), "layer2.0", api_name="/lesion")
    k = 1 + list(model.blocks()).index("layer2.0")  # row 0 is the intact network
    assert numbers["block"] == "layer2.0"
    assert numbers["without_block"]["class"] == CLASSES[int(probs[k].argmax())]
    assert numbers["without_block"]["probability"] == pytest.approx(float(probs[k].max()), abs=1e-4)
    assert numbers["intact"]["class"] == CLASSES[int(probs[0].argmax())]
    assert len(numbers["every_block"]) == 16
    assert "layer2.0" in text
    (bars,) = plot_data(plot)
    assert len(bars["x"]) == 16


@pytest.mark.parametrize("call, message", [
    # Gradio checks a dropdown's choices itself; either way the message names the bad value.
    (lambda c: c.predict(upload(), "layer9.9", api_name="/lesion"), "layer9.9"),
    (lambda c: c.predict(None, "layer1.0", api_name="/lesion"), "No image yet"),
    (lambda c: c.predict(None, "predicted class", api_name="/gradient_flow"), "No image yet"),
    (lambda c: c.predict(upload(), "unicorn", api_name="/gradient_flow"), "unicorn"),
])
def test_bad_requests_get_one_sentence_and_the_server_keeps_serving(client, call, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=message):
        call(client)
    assert client.predict(upload(), "layer1.0", api_name="/lesion")[2]["block"] == "layer1.0"


def test_an_unknown_block_is_refused_by_the_handler_too():
    from explorer.tabs import residuals as tab

    with pytest.raises(Exception, match="Unknown block 'layer9.9'"):
        tab.lesion(str(CAT), "layer9.9")


def test_without_the_twins_file_the_tab_says_how_to_make_it_and_keeps_the_lesion_study(tmp_path, monkeypatch):
    from explorer.tabs import residuals as tab

    (tmp_path / residuals.LESIONS_FILE).write_text((ASSETS / residuals.LESIONS_FILE).read_text())
    monkeypatch.setattr(tab, "ASSETS", tmp_path)
    twin_md, twin_plot, study_md, study_plot, pairs, numbers = tab.plain_vs_residual()
    assert "not trained in this build" in twin_md and "python -m train.twin" in twin_md and twin_plot is None
    assert study_plot is not None and numbers["plain_twin"] is None and pairs[0][-1] == ""


def test_a_lesion_study_of_other_weights_is_not_shown_as_this_models(tmp_path, monkeypatch):
    from explorer.tabs import residuals as tab

    study = json.loads((ASSETS / residuals.LESIONS_FILE).read_text())
    (tmp_path / residuals.LESIONS_FILE).write_text(json.dumps({**study, "weights_sha256": "0" * 64}))
    monkeypatch.setattr(tab, "ASSETS", tmp_path)
    _, _, study_md, study_plot, _, numbers = tab.plain_vs_residual()
    assert "made for other weights" in study_md and study_plot is None and numbers is None


def test_the_shipped_lesion_study_describes_the_shipped_weights():
    from insight.atlas import sha256_of

    study = json.loads((ASSETS / residuals.LESIONS_FILE).read_text())
    assert study["weights_sha256"] == sha256_of(ASSETS / "resnet50_cifar10.safetensors")
    assert study["images"] == 2000 and len(study["single"]) == 16 and len(study["pairs"]) == 15
