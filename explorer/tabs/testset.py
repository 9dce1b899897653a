"""Test set: the confusion matrix, per-class accuracy, and the test images of any (true, predicted) pair."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
import plotly.graph_objects as go
from PIL import Image

from insight import gradcam, testset
from resnet import CLASSES, STAGE_NAMES, preprocess

from ..context import MODEL, TEST_SET, check_stage, enlarge, pair_overlays, user_errors
from ..plots import MARGIN
from ..ui import Ctx


def confusion_matrix_figure(ev: dict[str, Any], normalise: bool = False) -> go.Figure:
    """Heatmap of the confusion matrix (rows true, columns predicted) with counts in the cells.

    ``normalise`` colours by the row fraction (recall per class) so rare and
    common mistakes are comparable; the cell text and hover keep the counts.
    """
    cm = np.asarray(ev["confusion_matrix"], dtype=np.int64)
    row_totals = cm.sum(axis=1, keepdims=True)
    frac = cm / np.maximum(row_totals, 1)
    z = frac if normalise else cm
    names = list(CLASSES)
    hover = [
        [f"true {names[t]}, predicted {names[p]}: {cm[t, p]} ({frac[t, p]:.1%} of {names[t]})" for p in range(len(names))]
        for t in range(len(names))
    ]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=names,
            y=names,
            text=cm,
            texttemplate="%{text}",
            customdata=hover,
            hovertemplate="%{customdata}<extra></extra>",
            colorscale="Blues",
            colorbar=dict(title="fraction of row" if normalise else "images"),
            # The diagonal dwarfs every mistake; a log-ish cap would lie about counts,
            # so clip the colour scale at the largest off-diagonal value instead.
            zmax=_offdiag_max(z) if not normalise else None,
            zmin=0,
        )
    )
    fig.update_layout(
        title=f"Confusion matrix, {int(cm.sum())} test images" + (" (colour: row fraction)" if normalise else ""),
        xaxis=dict(title="predicted", side="bottom", tickangle=-45),
        yaxis=dict(title="true", autorange="reversed"),
        margin=MARGIN,
        height=520,
    )
    return fig


def _offdiag_max(z: np.ndarray) -> float | None:
    off = z[~np.eye(len(z), dtype=bool)]
    top = float(off.max()) if off.size else 0.0
    return top * 1.25 if top > 0 else None


def per_class_accuracy_figure(ev: dict[str, Any]) -> go.Figure:
    """Bars of per-class accuracy with the overall accuracy as a dashed line."""
    acc = np.asarray(ev["per_class_accuracy"], dtype=np.float64)
    overall = float(ev["accuracy"])
    fig = go.Figure(
        go.Bar(
            x=list(CLASSES),
            y=acc,
            text=[f"{a:.1%}" for a in acc],
            textposition="outside",
            marker_color=["#d62728" if a == acc.min() else "#1f77b4" for a in acc],
            hovertemplate="%{x}: %{y:.2%}<extra></extra>",
        )
    )
    # The overall figure goes in the title: a label on the line would sit on top of the bars.
    fig.add_hline(y=overall, line_dash="dash", line_color="gray")
    fig.update_layout(
        title=f"Accuracy per class (dashed: overall {overall:.1%})",
        yaxis=dict(title="accuracy", tickformat=".0%", range=[max(0.0, float(acc.min()) - 0.1), 1.05]),
        margin=MARGIN,
        height=380,
    )
    return fig


def test_set_markdown(summary: dict[str, Any]) -> str:
    """The test-set tab's headline, from ``resnet.testset.accuracy_summary``."""
    tta = summary.get("accuracy_tta")
    tta_text = f" ({tta:.2%} with horizontal-flip test-time augmentation)" if tta is not None else ""
    dataset = f" ({summary['dataset']})" if summary.get("dataset") else ""
    text = (
        f"**{summary['accuracy']:.2%}** of the {summary['n']:,} test images{dataset} are classified "
        f"correctly{tta_text}. Weakest class: **{summary['worst_class']}** ({summary['worst_class_accuracy']:.1%})."
    )
    if summary.get("most_confused"):
        text += f" Most frequent mistake: **{summary['most_confused']}**."
    return text


THUMB = 96  # side in px of the test-set gallery thumbnails


def _thumb(image: np.ndarray, side: int = THUMB) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.NEAREST))


def _evaluation() -> dict[str, Any] | None:
    """The validated evaluation.json, or None after telling the user why it is unavailable."""
    try:
        return TEST_SET.evaluation
    except testset.TestSetError as exc:
        gr.Warning(str(exc), title="No test-set evaluation")
        return None


@user_errors
def open_test_set(normalise: bool, loaded: bool) -> tuple:
    """The explorer's first view: summary, confusion matrix, per-class bars and the pair dropdown."""
    if loaded:  # reopening the tab keeps the user's pair and gallery
        return (gr.skip(),) * 6
    missing = TEST_SET.available()
    if missing is not None:
        return f"**The test-set explorer is not available.** {missing}", "", None, None, gr.Dropdown(choices=[], value=None), False
    ev = TEST_SET.evaluation
    pair = testset.most_confused_pair(ev)
    first = testset.pair_value(*pair[:2]) if pair else testset.pair_value(0, 0)
    return (
        "",
        test_set_markdown(testset.accuracy_summary(ev)),
        confusion_matrix_figure(ev, normalise=bool(normalise)),
        per_class_accuracy_figure(ev),
        gr.Dropdown(choices=testset.pair_choices(ev), value=first),
        True,
    )


@user_errors
def confusion_matrix(normalise: bool):
    ev = _evaluation()
    return None if ev is None else confusion_matrix_figure(ev, normalise=bool(normalise))


@user_errors
def test_pair_gallery(pair: str | None) -> tuple:
    """The shipped test images of one (true, predicted) pair, most confident first; clears the selection."""
    if not pair:
        return [], [], "", None
    true, pred = testset.parse_pair(pair)
    items = testset.gallery(TEST_SET, true, pred)
    return (
        [(_thumb(it.image), it.caption) for it in items],
        [it.row for it in items],
        testset.gallery_summary(TEST_SET, true, pred, shown=len(items)),
        None,
    )


@user_errors
def test_image_cams(row: float | None, stage: str) -> tuple:
    """One shipped test image: Grad-CAM for the class the model predicted and for the true class."""
    if row is None or row == "":
        return None, [], ""
    stage = check_stage(stage)
    if float(row) != int(float(row)):
        raise ValueError(f"A test image number is a whole number; got {row}.")
    row = int(float(row))
    record = TEST_SET.record(row)
    image = TEST_SET.image(row)
    x = preprocess.to_model_input(Image.fromarray(image)).tensor
    pred = gradcam.gradcam_all_stages(MODEL, x, record["pred"])
    true = pred if record["correct"] else gradcam.gradcam_all_stages(MODEL, x, record["label"])
    cams = pair_overlays(
        (image, image),
        (pred.maps[stage], true.maps[stage]),
        (f"{stage} Grad-CAM for the prediction: {record['pred_name']}",
         f"{stage} Grad-CAM for the true class: {record['label_name']}"),
    )
    now = int(np.argmax(pred.probs))
    verdict = "correct" if record["correct"] else "wrong"
    note = (
        f"Test image **#{row}**: true class **{record['label_name']}**, predicted **{record['pred_name']}** "
        f"with {record['confidence']:.1%} confidence ({verdict}; P({record['label_name']}) = {record['true_class_prob']:.1%}). "
        f"Both maps share one colour scale (red = {max(float(pred.maps[stage].max()), float(true.maps[stage].max())):.2g}). "
        f"Recomputed here, the model predicts {CLASSES[now]} ({float(pred.probs[now]):.1%})."
    )
    return enlarge(image), cams, note


def select_test_image(rows: list[int], stage: str, evt: gr.SelectData) -> tuple:
    """Gallery click -> that image's row and its two Grad-CAMs."""
    if not rows or not isinstance(evt.index, int) or not 0 <= evt.index < len(rows):
        return None, None, [], ""
    row = rows[evt.index]
    return row, *test_image_cams(row, stage)


def build(ctx: Ctx) -> None:
    with gr.Tab("Test set", id="testset") as tab:
        gr.Markdown(
            "Where does the model fail? The confusion matrix counts every evaluated test image (rows: true class, "
            "columns: prediction). Pick a (true, predicted) pair to see its test images, most confident first, "
            "then click one to compare its Grad-CAM for the predicted and for the true class. Only a selection "
            "of the test set is shipped: every cell's most confident mistakes and some correct images per class."
        )
        missing = gr.Markdown(elem_id="testset-missing")
        summary = gr.Markdown(elem_id="testset-summary")
        normalise = gr.Checkbox(False, label="Colour by fraction of the true class (row-normalised); cells keep the counts")
        with gr.Row(equal_height=False):
            matrix = gr.Plot(label="Confusion matrix", elem_id="confusion-plot", scale=3)
            bars = gr.Plot(label="Accuracy per class", elem_id="class-accuracy-plot", scale=2)
        pair = gr.Dropdown([], value=None, label="True -> predicted (most frequent mistakes first, then each class's correct images)",
                           allow_custom_value=True, elem_id="pair-dropdown")
        pair_note = gr.Markdown(elem_id="pair-summary")
        thumbs = gr.Gallery(label="Test images of this pair (click one)", columns=8, height=340, object_fit="contain",
                            format="png", allow_preview=False, elem_id="test-gallery")
        rows = gr.State([])
        loaded = gr.State(False)
        with gr.Row():
            row = gr.Number(label="Test image # (row in evaluation.json; type one and press Enter)", precision=0,
                            elem_id="test-row")
            stage = gr.Radio(list(STAGE_NAMES), value="layer4", label="Grad-CAM layer")
        with gr.Row(equal_height=False):
            image = gr.Image(label="The test image (32x32, enlarged)", interactive=False, format="png", height=256, scale=1)
            cams = gr.Gallery(label="Grad-CAM: predicted class vs true class", columns=2, rows=1,
                              object_fit="contain", format="png", allow_preview=False, elem_id="test-cams", scale=2)
        note = gr.Markdown(elem_id="test-image-note")
    tab.select(open_test_set, inputs=[normalise, loaded], outputs=[missing, summary, matrix, bars, pair, loaded],
               api_name="test_set")
    normalise.change(confusion_matrix, inputs=[normalise], outputs=[matrix], api_name="confusion_matrix")
    pair.change(test_pair_gallery, inputs=[pair], outputs=[thumbs, rows, pair_note, row], api_name="test_pair_gallery")
    thumbs.select(select_test_image, inputs=[rows, stage], outputs=[row, image, cams, note],
                  api_name="test_select_image", api_visibility="private")
    gr.on([row.submit, stage.change], test_image_cams, inputs=[row, stage], outputs=[image, cams, note],
          api_name="test_image_cams")
