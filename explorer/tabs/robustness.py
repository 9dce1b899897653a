"""Robustness: corrupt the image with sliders, sweep one perturbation, and watch the prediction."""

from __future__ import annotations

from typing import Any, Sequence

import gradio as gr
import numpy as np
import plotly.graph_objects as go

from insight import gradcam, robustness
from insight.robustness import STRENGTH_UNITS, SweepPoint
from resnet import CLASSES, STAGE_NAMES, preprocess

from ..context import MODEL, TOP_K, check_stage, enlarge, known_label, model_input, no_image, pair_overlays, user_errors
from ..plots import MARGIN
from ..ui import Ctx


def robustness_line_figure(points: Sequence[SweepPoint | Sequence[float]], kind: str, true_label: int | None = None) -> go.Figure:
    """True-class probability as the perturbation strength grows, marking where the prediction flips."""
    pts = [SweepPoint(*p) for p in points]
    x = [p.strength for p in pts]
    ref = CLASSES[true_label] if true_label is not None else "reference class"
    fig = go.Figure(
        go.Scatter(
            x=x,
            y=[p.true_prob for p in pts],
            mode="lines+markers",
            name=f"P({ref})",
            customdata=[[CLASSES[p.pred], p.pred_prob] for p in pts],
            hovertemplate=f"strength %{{x:.3g}}<br>P({ref}) %{{y:.1%}}<br>predicted %{{customdata[0]}} (%{{customdata[1]:.1%}})<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[p.pred_prob for p in pts],
            mode="markers+text",
            name="top prediction",
            text=[CLASSES[p.pred] for p in pts],
            textposition="top center",
            marker=dict(symbol="x", color=["#2ca02c" if true_label is None or p.pred == true_label else "#d62728" for p in pts]),
            hoverinfo="skip",
        )
    )
    fig.update_layout(
        title=f"Confidence under {kind}",
        xaxis=dict(title=STRENGTH_UNITS.get(kind, "strength")),
        yaxis=dict(title="probability", range=[0, 1.08], tickformat=".0%"),
        margin=MARGIN,
        height=340,
        legend=dict(orientation="h", y=-0.25),
    )
    return fig


N_PROBE_OUTPUTS = 5  # perturbed image, clean top-k, perturbed top-k, Grad-CAM pair, note


def _reference(image: str, x: preprocess.ModelInput) -> tuple[int, str]:
    """The class whose confidence the probe follows: the true one for a shipped sample, else the clean prediction."""
    known = known_label(image)
    if known is not None:
        return known, f"**{CLASSES[known]}**, the true class of this CIFAR-10 test image"
    pred = int(np.argmax(gradcam.predict_probs(MODEL, x.tensor)))  # only paid for the user's own images
    return pred, f"**{CLASSES[pred]}**, the model's prediction for the clean image (the true class of your own image is unknown)"


@user_errors
def robustness_probe(image: str | None, noise: float, blur_sigma: float, brightness: float, contrast: float,
                     patch_size: float, patch_x: float, patch_y: float, fgsm_levels: float, stage: str) -> tuple:
    """Perturb the current image as the sliders say; top-k and Grad-CAM before and after."""
    if image is None:
        no_image()
        return (None,) * 4 + ("",)
    stage = check_stage(stage)
    x = model_input(image)
    ref, ref_text = _reference(image, x)
    out = robustness.probe(
        MODEL, x.seen, true_label=ref, fgsm_epsilon=float(fgsm_levels) / 255.0, k=TOP_K,
        noise=float(noise), blur_sigma=float(blur_sigma), brightness=float(brightness), contrast=float(contrast),
        patch_size=int(patch_size), patch_x=int(patch_x), patch_y=int(patch_y),
    )
    cams = pair_overlays(
        (x.seen, out["image"]),
        (out["clean_cams"][stage], out["cams"][stage]),
        (f"clean · {stage} Grad-CAM for {out['reference_name']}", f"perturbed · {stage} Grad-CAM for {out['reference_name']}"),
    )
    before, after = float(out["clean_probs"][ref]), float(out["probs"][ref])
    flipped = (f"The top-1 changes from {CLASSES[out['clean_pred']]} to **{CLASSES[out['pred']]}**."
               if out["pred"] != out["clean_pred"] else f"The top-1 stays {CLASSES[out['pred']]}.")
    note = (
        f"Reference class: {ref_text}. P({out['reference_name']}) {before:.1%} -> **{after:.1%}** "
        f"({after - before:+.1%}); largest pixel change {out['max_pixel_change']} of 255 grey levels. {flipped} "
        "Both Grad-CAMs are for the reference class, on one colour scale."
    )
    return enlarge(out["image"]), out["clean_top_k"], out["top_k"], cams, note


@user_errors
def robustness_sweep(image: str | None, kind: str, patch_x: float, patch_y: float) -> tuple:
    """P(reference class) as one perturbation grows from 0, in one batched pass."""
    if image is None:
        no_image()
        return None, ""
    if kind not in robustness.SWEEP_KINDS:
        raise ValueError(f"Unknown perturbation {kind!r}; choose one of {', '.join(robustness.SWEEP_KINDS)}.")
    x = model_input(image)
    ref, ref_text = _reference(image, x)
    options = {"x": int(patch_x), "y": int(patch_y)} if kind == "occlusion" else {}
    points = robustness.sweep(MODEL, x.seen, kind, None, ref, **options)
    flips = [p.strength for p in points if p.pred != points[0].pred]
    where = (f"the top-1 first changes (to {CLASSES[next(p.pred for p in points if p.pred != points[0].pred)]}) "
             f"at {_strength(kind, flips[0])}" if flips else "the top-1 never changes over this range")
    unit = robustness.STRENGTH_UNITS[kind]
    return (
        robustness_line_figure(points, kind, ref),
        f"{kind}: {len(points)} strengths of {unit} from {_strength(kind, points[0].strength)} to "
        f"{_strength(kind, points[-1].strength)}; {where}. Reference class: {ref_text}.",
    )


def _strength(kind: str, value: float) -> str:
    return f"{value * 255:.0f}/255" if kind == "fgsm" else f"{value:.3g}"


@user_errors
def robustness_follow(image: str | None, *settings: Any) -> tuple:
    """A new image while the tab is on screen: the probe and the sweep again."""
    if image is None:
        return (None,) * 4 + ("",) + (None, "")
    noise, blur_sigma, brightness, contrast_, patch_size, patch_x, patch_y, fgsm_levels, stage, kind = settings
    probe = robustness_probe(image, noise, blur_sigma, brightness, contrast_, patch_size, patch_x, patch_y, fgsm_levels, stage)
    return (*probe, *robustness_sweep(image, kind, patch_x, patch_y))


def build(ctx: Ctx) -> None:
    with gr.Tab("Robustness", id="robustness") as tab:
        gr.Markdown(
            "What breaks the prediction? Corrupt the current image with the sliders (applied in the order "
            "brightness/contrast, blur, noise, patch, then FGSM) and compare the top 5 and the Grad-CAM before and "
            "after. FGSM is Captum's `captum.robust.FGSM`: one signed-gradient step of at most epsilon per pixel "
            "that raises the loss of the reference class. The reference class is the true class for one of the "
            "test images above, otherwise the model's prediction for the clean image."
        )
        with gr.Row():
            noise = gr.Slider(0.0, 0.5, value=0.0, step=0.01, label="Gaussian noise sigma (fraction of 0..255)")
            blur_sigma = gr.Slider(0.0, 3.0, value=0.0, step=0.1, label="Blur sigma (pixels)")
            brightness = gr.Slider(-0.5, 0.5, value=0.0, step=0.02, label="Brightness shift (fraction of 0..255)")
            contrast_ = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Contrast (1 = unchanged, 0 = flat grey)")
        with gr.Row():
            patch_size = gr.Slider(0, 32, value=0, step=1, label="Occluding patch side (pixels, 0 = none)")
            patch_x = gr.Slider(0, 31, value=16, step=1, label="Patch centre x (column)")
            patch_y = gr.Slider(0, 31, value=16, step=1, label="Patch centre y (row)")
            fgsm_levels = gr.Slider(0, 16, value=0, step=1, label="FGSM epsilon (x/255 per pixel)", elem_id="fgsm-slider")
        with gr.Row():
            stage = gr.Radio(list(STAGE_NAMES), value="layer3", label="Grad-CAM layer", scale=2)
            reset = gr.Button("Reset sliders", scale=1)
        with gr.Row(equal_height=False):
            perturbed = gr.Image(label="Perturbed image (what is classified, enlarged)", interactive=False, format="png",
                                 height=256, elem_id="perturbed-image")
            clean_label = gr.Label(num_top_classes=TOP_K, label="Clean image (top 5)", elem_id="clean-prediction")
            perturbed_label = gr.Label(num_top_classes=TOP_K, label="Perturbed image (top 5)", elem_id="perturbed-prediction")
        with gr.Row(equal_height=False):
            # Square cells: a gallery's thumbnails are square, so a fixed height would crop them.
            cams = gr.Gallery(label="Grad-CAM for the reference class: clean vs perturbed", columns=2, rows=1,
                              object_fit="contain", format="png", allow_preview=False, elem_id="robustness-cams", scale=2)
            note = gr.Markdown(elem_id="robustness-note")
        gr.Markdown("### Sweep one perturbation")
        with gr.Row():
            kind = gr.Dropdown(list(robustness.SWEEP_KINDS), value="noise", label="Perturbation", scale=2)
            sweep_button = gr.Button("Sweep", variant="primary", scale=1, elem_id="sweep-button")
        line = gr.Plot(label="Reference-class confidence as the strength grows", elem_id="robustness-plot")
        sweep_note = gr.Markdown(elem_id="sweep-note")
    sliders = [noise, blur_sigma, brightness, contrast_, patch_size, patch_x, patch_y, fgsm_levels]
    probe_outputs = [perturbed, clean_label, perturbed_label, cams, note]
    gr.on(
        [tab.select, stage.change, *(s.release for s in sliders)],
        robustness_probe,
        inputs=[ctx.image, *sliders, stage],
        outputs=probe_outputs,
        api_name="robustness_probe",
    )
    rest = [0.0, 0.0, 0.0, 1.0, 0, 16, 16, 0]
    reset.click(
        lambda: rest, outputs=sliders, api_name="robustness_reset", api_visibility="private", queue=False
    ).then(robustness_probe, inputs=[ctx.image, *sliders, stage], outputs=probe_outputs, api_visibility="private")
    gr.on(
        [tab.select, sweep_button.click, kind.change],
        robustness_sweep,
        inputs=[ctx.image, kind, patch_x, patch_y],
        outputs=[line, sweep_note],
        api_name="robustness_sweep",
    )
    ctx.follow("robustness", robustness_follow, inputs=[*sliders, stage, kind], outputs=[*probe_outputs, line, sweep_note])
