"""Grad-CAM at every stage: the four maps for any class, and a contrasting attribution."""

from __future__ import annotations

import gradio as gr
import numpy as np

from insight import render
from insight.contrast import CONTRAST_METHODS, contrast_map
from insight.gradcam import Analysis, analyze, predict_probs
from resnet import CLASSES, STAGE_NAMES

from ..context import DISPLAY, MODEL, PREDICTED, STRIDES, TARGET_CHOICES, model_input, target_index, user_errors
from ..ui import Ctx

SCALES = ("per map", "shared")


def _stage_caption(name: str, cam: np.ndarray) -> str:
    h, w = cam.shape
    return f"{name} · {h}x{w} · max {float(cam.max()):.2g}"


def cam_outputs(result: Analysis, seen: np.ndarray, opacity: float, scale: str) -> tuple:
    if scale not in SCALES:
        raise ValueError(f"Colour scale must be one of {', '.join(SCALES)}; got {scale!r}.")
    if not 0.0 <= float(opacity) <= 1.0:
        raise ValueError(f"Opacity must be between 0 and 1; got {opacity}.")
    shared = max(float(m.max()) for m in result.cams.values())
    gallery = []
    for name in STAGE_NAMES:
        cam = result.cams[name]
        vmax = shared if scale == "shared" else float(cam.max())
        gallery.append((render.overlay(seen, cam, opacity=float(opacity), vmax=vmax, size=DISPLAY), _stage_caption(name, cam)))
    target = CLASSES[result.target]
    sizes = ", ".join(
        f"{n} {m.shape[0]}x{m.shape[1]} (1 cell = {STRIDES[n]}x{STRIDES[n]} px)" for n, m in result.cams.items()
    )
    note = (
        f"Grad-CAM for **{target}** (p = {result.probs[result.target]:.3f}); "
        f"{'the predicted class' if result.target == result.predicted else f'the model predicts {CLASSES[result.predicted]}'}. "
        f"Colour: blue = 0, red = {f'{shared:.2g}, the largest value of all four maps' if scale == 'shared' else 'each map’s own maximum'}. "
        f"Stage resolutions: {sizes}. layer4 is only {result.cams['layer4'].shape[0]}x{result.cams['layer4'].shape[1]} on a 32x32 input, so its map is "
        "coarse by construction; the smooth look comes from bilinear upsampling."
    )
    raw = {
        "target": target,
        "maps": {name: m.tolist() for name, m in result.cams.items()},
    }
    return gallery, note, raw


@user_errors
def gradcam(image: str | None, target: str, opacity: float, scale: str) -> tuple:
    """Grad-CAM overlays of layer1..layer4 for a target class, and the raw maps."""
    if image is None:
        return [], "", None
    x = model_input(image)
    return cam_outputs(analyze(MODEL, x.tensor, target_index(target)), x.seen, opacity, scale)


@user_errors
def contrast(image: str | None, target: str, method: str, opacity: float) -> tuple:
    if image is None:
        return None, ""
    x = model_input(image)
    t = target_index(target)
    if t is None:
        t = int(np.argmax(predict_probs(MODEL, x.tensor)))
    attribution = contrast_map(MODEL, x.tensor, t, method)
    what = {
        "Integrated Gradients": "pixel-level: |gradient x (image - mean image)| integrated along the path, summed over RGB",
        "Occlusion": "how much the logit drops when an 8x8 patch is replaced by the data set's mean colour (stride 4)",
    }[method]
    return (
        render.overlay(x.seen, attribution, opacity=float(opacity), size=DISPLAY),
        f"**{method}** for **{CLASSES[t]}**: {what}. Unlike Grad-CAM it does not look inside the network's stages.",
    )


def contrast_follow(image: str | None, open_tab: str, target: str, method: str, opacity: float) -> tuple:
    """A new image: redo the contrast map if the Grad-CAM tab is on screen, else clear it.

    Integrated Gradients costs about ten full analyses on this CPU, so images
    browsed from another tab do not pay for it; opening the tab computes it.
    """
    if open_tab != "gradcam" or image is None:
        return None, ""
    return contrast(image, target, method, opacity)


def build(ctx: Ctx) -> None:
    with gr.Tab("Grad-CAM at every stage", id="gradcam") as tab:
        gr.Markdown(
            "Captum's `LayerGradCam` (ReLU applied) at the output of each stage, for the class you choose: "
            "where the evidence for that class sits at each depth. All four maps come from one forward and "
            "one backward pass."
        )
        with gr.Row():
            target = gr.Dropdown(TARGET_CHOICES, value=PREDICTED, label="Explain class", scale=2)
            opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity", scale=2)
            scale = gr.Radio(list(SCALES), value="per map", label="Colour scale", scale=1)
        cams = gr.Gallery(
            label="Grad-CAM overlays",
            columns=4,
            rows=1,
            height=300,
            object_fit="contain",
            format="png",
            elem_id="gradcam-gallery",
        )
        note = gr.Markdown(label="Grad-CAM note")
        with gr.Accordion("Raw Grad-CAM values (stage resolution)", open=False):
            raw = gr.JSON(label="maps")
        gr.Markdown("### For contrast: a method that does not look inside the stages")
        with gr.Row():
            with gr.Column(scale=1):
                method = gr.Radio(list(CONTRAST_METHODS), value=CONTRAST_METHODS[0], label="Method")
                contrast_note = gr.Markdown(label="contrast note")
            contrast_image = gr.Image(label="Attribution", interactive=False, format="png", height=256, scale=1)
    ctx.controls.update(target=target, opacity=opacity, scale=scale)
    ctx.outputs.update(cams=cams, cam_note=note, cam_raw=raw)
    gr.on(
        [target.change, scale.change, opacity.release],
        gradcam,
        inputs=[ctx.image, target, opacity, scale],
        outputs=[cams, note, raw],
        api_name="gradcam",
    )
    gr.on(
        [tab.select, method.change, target.change, opacity.release],
        contrast,
        inputs=[ctx.image, target, method, opacity],
        outputs=[contrast_image, contrast_note],
        api_name="contrast",
    )
    ctx.analysed.change(
        contrast_follow,
        inputs=[ctx.image, ctx.open_tab, target, method, opacity],
        outputs=[contrast_image, contrast_note],
        api_name="contrast_follow",
        api_visibility="private",
    )
