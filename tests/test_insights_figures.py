"""The insight tabs' Plotly figures show the numbers they are given, and say what they are."""

from __future__ import annotations

import json

import numpy as np
import plotly.graph_objects as go
import pytest

from conftest import make_evaluation  # the synthetic evaluation.json (tests/conftest.py)
from explorer.tabs.calibration import confidence_histogram_figure, reliability_figure
from explorer.tabs.robustness import robustness_line_figure
from explorer.tabs.sanity import sanity_figure
from explorer.tabs.testset import confusion_matrix_figure, per_class_accuracy_figure
from insight.robustness import STRENGTH_UNITS, SweepPoint
from resnet.constants import CLASSES


def serialisable(fig: go.Figure) -> dict:
    """What Gradio sends to the browser; numpy leftovers would fail here."""
    return json.loads(fig.to_json())


def test_confusion_matrix_shows_counts_with_readable_hover() -> None:
    ev = make_evaluation()
    fig = confusion_matrix_figure(ev)
    heat = fig.data[0]
    np.testing.assert_array_equal(np.asarray(heat.z), np.asarray(ev["confusion_matrix"]))
    assert list(heat.x) == list(CLASSES) and list(heat.y) == list(CLASSES)
    cat, dog = CLASSES.index("cat"), CLASSES.index("dog")
    assert heat.customdata[cat][dog].startswith("true cat, predicted dog: 4")
    assert str(sum(map(sum, ev["confusion_matrix"]))) in fig.layout.title.text
    serialisable(fig)


def test_row_normalised_colours_are_per_class_fractions_but_text_keeps_counts() -> None:
    ev = make_evaluation()
    fig = confusion_matrix_figure(ev, normalise=True)
    z = np.asarray(fig.data[0].z)
    np.testing.assert_allclose(z.sum(axis=1), 1.0)
    np.testing.assert_array_equal(np.asarray(fig.data[0].text), np.asarray(ev["confusion_matrix"]))


def test_per_class_accuracy_bars_mark_the_worst_class() -> None:
    ev = make_evaluation()
    fig = per_class_accuracy_figure(ev)
    bars = fig.data[0]
    np.testing.assert_allclose(bars.y, ev["per_class_accuracy"])
    worst = int(np.argmin(ev["per_class_accuracy"]))
    assert bars.marker.color[worst] != bars.marker.color[(worst + 1) % len(CLASSES)]
    assert f"overall {ev['accuracy']:.1%}" in fig.layout.title.text
    assert not fig.layout.annotations  # no label drawn over the bars
    serialisable(fig)


def test_reliability_diagram_has_ece_and_the_temperature_curve_with_its_data() -> None:
    ev = make_evaluation(temperature=True)
    fig = reliability_figure(ev)
    title = fig.layout.title.text
    assert "ECE 5.00%" in title and "T = 1.50" in title and "2.00%" in title
    assert ev["temperature_fit_on"] in fig.layout.annotations[0].text  # says which data the temperature saw
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 2
    used = sum(c > 0 for c in ev["reliability"]["count"])
    assert len(bars[0].x) == used  # empty bins draw nothing
    np.testing.assert_allclose(sorted(bars[0].y), sorted(a for a, c in zip(ev["reliability"]["accuracy"], ev["reliability"]["count"]) if c))
    assert len(fig.layout.shapes) == used  # one gap per non-empty bin
    assert any(t.name == "perfect calibration" for t in fig.data)
    serialisable(fig)


def test_reliability_diagram_without_temperature_has_one_curve() -> None:
    fig = reliability_figure(make_evaluation(temperature=False))
    assert len([t for t in fig.data if t.type == "bar"]) == 1
    assert "temperature" not in fig.layout.title.text and not fig.layout.annotations


def test_confidence_histogram_splits_right_and_wrong() -> None:
    ev = make_evaluation()
    fig = confidence_histogram_figure(ev)
    wrong = sum(label != pred for label, pred in zip(ev["predictions"]["label"], ev["predictions"]["pred"]))
    assert [t.name for t in fig.data] == ["correct", "wrong"]
    assert len(fig.data[1].x) == wrong
    serialisable(fig)


def test_robustness_line_plots_the_true_class_probability_against_strength() -> None:
    points = [SweepPoint(0.0, 0.9, 3, 0.9), SweepPoint(0.1, 0.4, 5, 0.5), SweepPoint(0.2, 0.1, 5, 0.8)]
    fig = robustness_line_figure(points, "noise", true_label=3)
    line = fig.data[0]
    assert list(line.x) == [0.0, 0.1, 0.2] and list(line.y) == [0.9, 0.4, 0.1]
    assert "P(cat)" in line.name
    assert list(fig.data[1].text) == ["cat", "dog", "dog"]
    colours = list(fig.data[1].marker.color)
    assert colours[0] != colours[1] == colours[2]  # the flip to a wrong class is marked
    assert fig.layout.xaxis.title.text == STRENGTH_UNITS["noise"]
    # Plain tuples (e.g. after a JSON round trip through gr.State) work too.
    plain = robustness_line_figure([tuple(p) for p in points], "fgsm")
    assert list(plain.data[0].y) == [0.9, 0.4, 0.1]
    serialisable(fig)


def test_sanity_figure_has_one_bar_group_per_cascade_step() -> None:
    result = {
        "target": 3,
        "steps": [
            {"randomised": ["layer4"], "metrics": {"layer3": {"spearman": 0.2}, "layer4": {"spearman": float("nan")}}},
            {"randomised": ["layer4", "layer3"], "metrics": {"layer3": {"spearman": -0.1}, "layer4": {"spearman": 0.05}}},
        ],
    }
    fig = sanity_figure(result)
    assert [t.name for t in fig.data] == ["randomised layer4", "randomised layer4+layer3"]
    assert list(fig.data[0].y) == [0.2, None]  # an undefined correlation is a gap, not a zero
    assert "cat" in fig.layout.title.text
    serialisable(fig)


@pytest.mark.parametrize("builder", [confusion_matrix_figure, per_class_accuracy_figure, reliability_figure])
def test_figures_accept_the_validated_evaluation_with_numpy_arrays(tmp_path, builder) -> None:
    from conftest import write_assets
    from insight.testset import TestSet

    write_assets(tmp_path)
    serialisable(builder(TestSet(tmp_path).evaluation))
