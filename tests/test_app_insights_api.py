"""The insight tabs through the API: test-set explorer, calibration, robustness probe and
sanity check answer on the shipped assets (assets/evaluation.json, test_gallery.npz, the
weights) with the structure the UI shows, and refuse bad requests with a sentence.

Uses the session's app server (``server`` / ``client`` in conftest.py). Expected values
are read from the same asset files here, never hard-coded.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from insight.robustness import default_strengths
from insight.testset import TestSet, most_confused_pair, pair_value
from resnet import CLASSES

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "assets" / "samples").glob("*.png"))
CAT_SAMPLE = ROOT / "assets" / "samples" / "cat_0.png"
AT_REST = (0.0, 0.0, 0.0, 1.0, 0, 16, 16, 0)  # noise, blur, brightness, contrast, patch size/x/y, FGSM levels
INSIGHT_ENDPOINTS = {
    "/test_set", "/confusion_matrix", "/test_pair_gallery", "/test_image_cams", "/calibration",
    "/robustness_probe", "/robustness_sweep", "/sanity_check",
}


@pytest.fixture(scope="module")
def shipped() -> TestSet:
    ts = TestSet(ROOT / "assets")
    if ts.available() is not None:
        pytest.fail(f"The shipped test-set files are unusable: {ts.available()}")
    return ts


def plot_json(answer: dict) -> dict:
    return json.loads(answer["plot"]) if isinstance(answer["plot"], str) else answer["plot"]


def plotly_array(data) -> np.ndarray:
    """A Plotly array as sent to the browser: a list, or a base64 typed array {"dtype", "bdata", "shape"}."""
    if isinstance(data, dict) and "bdata" in data:
        flat = np.frombuffer(base64.b64decode(data["bdata"]), dtype=np.dtype(data["dtype"]))
        shape = tuple(int(n) for n in str(data.get("shape", len(flat))).split(","))
        return flat.reshape(shape)
    return np.asarray(data)


def caption_row(caption: str) -> int:
    return int(re.search(r"#(\d+)$", caption).group(1))


def sample(path: Path = CAT_SAMPLE):
    from gradio_client import handle_file

    return handle_file(str(path))


def top1(label: dict) -> tuple[str, float]:
    best = label["confidences"][0]
    return best["label"], best["confidence"]


# ----- the API surface -----------------------------------------------------------------------


def test_every_insight_tab_has_a_named_endpoint_and_internal_glue_stays_private(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert INSIGHT_ENDPOINTS <= names
    assert not {n for n in names if n.startswith("/open_") or n.endswith("_follow")}


# ----- test-set explorer ---------------------------------------------------------------------


def test_the_test_set_opens_on_the_most_confused_pair_with_the_shipped_confusion_matrix(client, shipped):
    ev = shipped.evaluation
    missing, summary, matrix, bars, dropdown = client.predict(False, api_name="/test_set")
    assert missing == ""
    assert f"{ev['accuracy']:.2%}" in summary and f"{int(ev['n']):,} test images" in summary
    heatmap = next(t for t in plot_json(matrix)["data"] if t["type"] == "heatmap")
    assert np.array_equal(plotly_array(heatmap["z"]), ev["confusion_matrix"])
    assert [b["type"] for b in plot_json(bars)["data"]] == ["bar"]
    true, pred, _ = most_confused_pair(ev)
    assert dropdown["value"] == pair_value(true, pred)
    choice_values = [v for _, v in dropdown["choices"]]
    assert choice_values[0] == dropdown["value"] and len(choice_values) == len(set(choice_values))
    assert pair_value(3, 3) in choice_values  # correct images of a class can be browsed too

    normalised = client.predict(True, api_name="/confusion_matrix")
    z = plotly_array(next(t for t in plot_json(normalised)["data"] if t["type"] == "heatmap")["z"])
    assert np.allclose(z.sum(axis=1), 1.0)  # row fractions


def test_the_pair_gallery_holds_only_that_pair_most_confident_first(client, shipped):
    ev = shipped.evaluation
    p = ev["predictions"]
    true, pred, count = most_confused_pair(ev)
    items, summary, row = client.predict(pair_value(true, pred), api_name="/test_pair_gallery")
    assert row is None  # a new pair clears the selected image
    rows = [caption_row(it["caption"]) for it in items]
    shipped_rows = [r for r in shipped.index if p["label"][r] == true and p["pred"][r] == pred]
    assert sorted(rows) == sorted(shipped_rows) and 0 < len(rows) <= count
    confidences = [p["confidence"][r] for r in rows]
    assert confidences == sorted(confidences, reverse=True)
    assert items[0]["caption"].startswith(f"{CLASSES[pred]} {confidences[0]:.1%} (true {CLASSES[true]}")
    assert f"{count} test images of {CLASSES[true]} predicted {CLASSES[pred]}" in summary
    with Image.open(items[0]["image"]) as im:
        shown = np.asarray(im.convert("RGB"))
    thumb = np.asarray(Image.fromarray(shipped.image(rows[0])).resize(shown.shape[:2][::-1], Image.Resampling.NEAREST))
    assert np.array_equal(shown, thumb)  # the image is the shipped test image, enlarged


def test_a_test_image_gets_grad_cam_for_the_predicted_and_the_true_class(client, shipped):
    ev = shipped.evaluation
    true, pred, _ = most_confused_pair(ev)
    row = next(int(r) for r in shipped.index if ev["predictions"]["label"][r] == true and ev["predictions"]["pred"][r] == pred)
    image, cams, note = client.predict(row, "layer3", api_name="/test_image_cams")
    assert len(cams) == 2
    assert cams[0]["caption"].endswith(f"prediction: {CLASSES[pred]}") and cams[1]["caption"].endswith(f"true class: {CLASSES[true]}")
    overlays = []
    for item in cams:
        with Image.open(item["image"]) as im:
            assert im.size == (256, 256)
            overlays.append(np.asarray(im.convert("RGB"), dtype=np.int16))
    assert np.abs(overlays[0] - overlays[1]).max() > 0  # two classes, two different maps
    assert f"#{row}" in note and CLASSES[true] in note and CLASSES[pred] in note
    with Image.open(image) as im:
        assert im.size == (256, 256)


def test_test_set_requests_that_cannot_be_answered_get_a_sentence(client, shipped):
    from gradio_client.exceptions import AppError

    not_shipped = next(r for r in range(shipped.evaluation["n"]) if not shipped.has_image(r))
    with pytest.raises(AppError, match="not in test_gallery.npz"):
        client.predict(not_shipped, "layer4", api_name="/test_image_cams")
    with pytest.raises(AppError, match="no test image #99999"):
        client.predict(99999, "layer4", api_name="/test_image_cams")
    with pytest.raises(AppError, match="not a \\(true, predicted\\) pair"):
        client.predict("cat,dog", api_name="/test_pair_gallery")
    with pytest.raises(AppError, match="layer9"):
        client.predict(0, "layer9", api_name="/test_image_cams")


# ----- calibration ---------------------------------------------------------------------------


def test_calibration_shows_the_ece_and_the_temperature_with_its_data(client, shipped):
    ev = shipped.evaluation
    text, reliability, histogram = client.predict(api_name="/calibration")
    assert f"{float(ev['ece']):.2%}" in text
    fig = plot_json(reliability)
    names = [t.get("name", "") for t in fig["data"]]
    assert "perfect calibration" in names
    if ev.get("temperature") is not None:
        assert f"T = {float(ev['temperature']):.2f}" in text
        assert ev["temperature_fit_on"] in text  # says which data the temperature was fitted on
        assert any(n.startswith(f"T = {float(ev['temperature']):.2f}") for n in names)
    counts = [len(plotly_array(t["x"])) for t in plot_json(histogram)["data"]]
    assert sum(counts) == ev["n"]  # every test image in the histogram, right or wrong


# ----- robustness ----------------------------------------------------------------------------


def test_the_probe_at_rest_is_the_clean_classification(client):
    clean = client.predict(sample(), api_name="/classify")
    image, clean_label, perturbed_label, cams, note = client.predict(sample(), *AT_REST, "layer3", api_name="/robustness_probe")
    assert top1(perturbed_label) == pytest.approx(top1(clean_label))
    assert top1(clean_label)[0] == clean["label"]
    assert top1(clean_label)[1] == pytest.approx(clean["confidences"][0]["confidence"], abs=1e-5)
    assert "**cat**, the true class" in note and "largest pixel change 0 of 255" in note
    assert len(cams) == 2
    with Image.open(cams[0]["image"]) as a, Image.open(cams[1]["image"]) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))  # same image, same map
    with Image.open(image) as im:
        assert im.size == (256, 256)


def test_fgsm_moves_every_changed_pixel_by_at_most_epsilon(client):
    *_, perturbed_label, cams, note = client.predict(sample(), 0.0, 0.0, 0.0, 1.0, 0, 16, 16, 8, "layer3",
                                                     api_name="/robustness_probe")
    assert "largest pixel change 8 of 255" in note
    with Image.open(cams[0]["image"]) as a, Image.open(cams[1]["image"]) as b:
        assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_an_own_image_is_probed_against_its_clean_prediction(client, tmp_path):
    path = tmp_path / "own.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    *_, note = client.predict(sample(path), 0.1, 0, 0, 1, 8, 10, 10, 0, "layer4", api_name="/robustness_probe")
    assert "the model's prediction for the clean image" in note


def test_the_sweep_starts_at_the_clean_confidence_of_the_true_class(client, local_probs):
    figure, note = client.predict(sample(), "occlusion", 16, 16, api_name="/robustness_sweep")
    line = plot_json(figure)["data"][0]
    y = plotly_array(line["y"])
    assert plotly_array(line["x"]) == pytest.approx(default_strengths("occlusion"))
    assert y[0] == pytest.approx(float(local_probs(CAT_SAMPLE)[CLASSES.index("cat")]), abs=1e-4)
    assert ((0.0 <= y) & (y <= 1.0)).all()
    assert "occlusion" in note and "**cat**" in note


def test_robustness_refuses_bad_settings_and_handles_a_missing_image(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="rain"):
        client.predict(sample(), "rain", 16, 16, api_name="/robustness_sweep")
    with pytest.raises(AppError, match="layer9"):
        client.predict(sample(), *AT_REST, "layer9", api_name="/robustness_probe")
    image, clean_label, perturbed_label, cams, note = client.predict(None, *AT_REST, "layer3", api_name="/robustness_probe")
    assert image is None and cams == [] and note == ""


# ----- sanity check --------------------------------------------------------------------------


def _check_step(step: dict) -> None:
    rho = step["spearman"]
    if rho is None:
        assert step["trained_flat"] or step["randomised_flat"]
        assert "flat" in step["verdict"] or "vanishes" in step["verdict"]
    else:
        assert -1.0 <= rho <= 1.0 and f"{rho:+.2f}" in step["verdict"]
    assert 0.0 <= step["top_overlap"] <= 1.0


def test_the_sanity_check_compares_trained_and_randomised_grad_cam(client, local_probs):
    gallery, figure, verdict, numbers = client.predict(sample(), False, "layer4", api_name="/sanity_check")
    predicted = CLASSES[int(np.argmax(local_probs(CAT_SAMPLE)))]
    assert numbers["target"] == predicted and numbers["stage"] == "layer4"
    assert [s["randomised"] for s in numbers["steps"]] == [["layer4"]]
    _check_step(numbers["steps"][0])
    assert [g["caption"].split(" · ")[0] for g in gallery] == ["trained weights", "layer4 re-initialised"]
    assert numbers["steps"][0]["verdict"] in verdict
    assert [t["type"] for t in plot_json(figure)["data"]] == ["bar"]


def test_the_cascade_re_initialises_one_more_stage_per_step(client):
    gallery, figure, _, numbers = client.predict(sample(), True, "layer2", api_name="/sanity_check")
    assert [s["randomised"] for s in numbers["steps"]] == [
        ["layer4"], ["layer4", "layer3"], ["layer4", "layer3", "layer2"], ["layer4", "layer3", "layer2", "layer1"],
    ]
    for step in numbers["steps"]:
        _check_step(step)
    assert len(gallery) == 5 and len(plot_json(figure)["data"]) == 4


def test_the_sanity_check_without_an_image_answers_empty(client):
    gallery, figure, verdict, numbers = client.predict(None, False, "layer4", api_name="/sanity_check")
    assert gallery == [] and verdict == "" and numbers is None


# ----- the tabs' Markdown summaries (in process, synthetic evaluation) ------------------------


def test_the_test_set_summary_names_accuracy_worst_class_and_most_frequent_mistake():
    from conftest import make_evaluation
    from explorer.tabs.testset import test_set_markdown
    from insight.testset import accuracy_summary

    ev = make_evaluation()
    text = test_set_markdown(accuracy_summary(ev))
    assert f"**{ev['accuracy']:.2%}** of the 80 test images (synthetic)" in text
    assert "Weakest class: **cat** (50.0%)" in text and "**cat -> dog (4)**" in text
    assert "flip" not in text  # no TTA number in this evaluation
    ev["accuracy_tta"] = 0.95
    assert "95.00% with horizontal-flip" in test_set_markdown(accuracy_summary(ev))


def test_the_calibration_summary_says_which_way_the_model_errs_and_where_t_was_fitted():
    from conftest import make_evaluation
    from explorer.tabs.calibration import calibration_markdown

    ev = make_evaluation()
    conf = np.asarray(ev["predictions"]["confidence"])
    acc = ev["accuracy"]
    text = calibration_markdown(ev)
    assert "**5.00%**" in text and "T = 1.50" in text and "softens" in text
    assert "fitted on 5,000 held-out training images" in text
    assert ("under-confident" if conf.mean() < acc - 0.01 else "over-confident") in text
    ev["predictions"]["confidence"] = [0.999] * ev["n"]
    assert "over-confident" in calibration_markdown(ev)
    assert "No temperature was fitted" in calibration_markdown(make_evaluation(temperature=False))
