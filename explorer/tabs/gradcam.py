"""Grad-CAM at every stage: the four maps for any class, and a contrasting attribution."""

from __future__ import annotations

import gradio as gr
import numpy as np

from insight import render
from insight.contrast import CONTRAST_METHODS, contrast_map
from resnet import CLASSES, STAGE_NAMES

from .. import camstrip
from ..cache import Entry, Recent
from ..context import (CACHE, DISPLAY, PREDICTED, SERVING, STRIDES, TARGET_CHOICES, target_index, user_errors,
                       webp_in_cache)
from ..ui import Ctx

SCALES = ("per map", "shared")
_LAYERS = Recent(8)  # (image, class, scale) -> the enlarged image and the four coloured maps, ~1 MB each
_FILES = Recent(64)  # (image, class, scale, opacity) -> the four overlays' files
CONTRAST_WHAT = {
    "Integrated Gradients": "pixel-level: |gradient x (image - mean image)| integrated along the path, summed over RGB",
    "Occlusion": "how much the logit drops when an 8x8 patch is replaced by the data set's mean colour (stride 4)",
}


def _stage_caption(name: str, cam: np.ndarray) -> str:
    h, w = cam.shape
    return f"{name} · {h}x{w} · max {float(cam.max()):.2g}"


def _check_view(opacity: float, scale: str) -> float:
    if scale not in SCALES:
        raise ValueError(f"Colour scale must be one of {', '.join(SCALES)}; got {scale!r}.")
    if not 0.0 <= float(opacity) <= 1.0:
        raise ValueError(f"Opacity must be between 0 and 1; got {opacity}.")
    return float(opacity)


def cam_view(entry: Entry, target: int, cams: dict[str, np.ndarray], opacity: float, scale: str) -> tuple:
    """The four overlays and the sentence under them: drawn from maps already computed."""
    opacity = _check_view(opacity, scale)
    shared = max(float(m.max()) for m in cams.values())
    gallery = list(zip(_overlay_files(entry, target, cams, opacity, scale, shared),
                       (_stage_caption(name, cams[name]) for name in STAGE_NAMES)))
    sizes = ", ".join(f"{n} {m.shape[0]}x{m.shape[1]} (1 cell = {STRIDES[n]}x{STRIDES[n]} px)" for n, m in cams.items())
    predicted = entry.predicted
    note = (
        f"Grad-CAM for **{CLASSES[target]}** (p = {entry.probs[target]:.3f}); "
        f"{'the predicted class' if target == predicted else f'the model predicts {CLASSES[predicted]}'}. "
        f"Colour: blue = 0, red = {f'{shared:.2g}, the largest value of all four maps' if scale == 'shared' else 'each map’s own maximum'}. "
        f"Stage resolutions: {sizes}. layer4 is only {cams['layer4'].shape[0]}x{cams['layer4'].shape[1]} on a 32x32 input, so its map is "
        "coarse by construction; the smooth look comes from bilinear upsampling."
    )
    return gallery, note


def _overlay_files(entry: Entry, target: int, cams: dict[str, np.ndarray], opacity: float, scale: str,
                   shared: float) -> list[str]:
    """The four overlays' files (layer1..layer4): made once per image, class, scale and opacity
    of the last few views, so going back to one sends the files the browser already holds.
    ``shared`` is the largest value of the four maps, the top of the "shared" colour scale."""

    def make() -> list[str]:
        # The enlarged image and the coloured maps do not depend on the opacity: kept for the
        # last few views, so moving the slider is four blends.
        base, layers = _LAYERS.get((entry.key, target, scale), lambda: (render.enlarge(entry.seen, DISPLAY), {
            name: render.heat(cam, DISPLAY, shared if scale == "shared" else None) for name, cam in cams.items()
        }))
        return [webp_in_cache(render.blend(base, layers[name], opacity)) for name in STAGE_NAMES]

    return _FILES.get((entry.key, target, scale, round(opacity, 4)), make)


def strip(entry: Entry, target: str, opacity: float, scale: str) -> dict:
    """What the browser's strip draws any view of this image from: every class's maps (one batched
    backward for an image not seen before), sent once; the view is the controls' values now."""
    _check_view(opacity, scale)
    target_index(target)
    CACHE.every_class(entry)
    return camstrip.payload(entry, {"target": target, "opacity": float(opacity), "scale": scale}, DISPLAY, STRIDES)


def cam_outputs(entry: Entry, target: int, opacity: float, scale: str) -> tuple:
    """Overlays, sentence and raw maps of ``target`` for an analysed image (one backward at most)."""
    cams = CACHE.cams(entry, target)
    return (*cam_view(entry, target, cams, opacity, scale), _raw(target, cams))


def _chosen(entry: Entry, target: str) -> int:
    """The class ``target`` names, or the image's predicted class."""
    chosen = target_index(target)
    return entry.predicted if chosen is None else chosen


def _entry_and_target(image: str, target: str) -> tuple[Entry, int]:
    entry = CACHE.entry(image)
    return entry, _chosen(entry, target)


@user_errors
def gradcam(image: str | None, target: str, opacity: float, scale: str) -> tuple:
    """Grad-CAM overlays of layer1..layer4 for a target class, and the raw maps."""
    if image is None:
        return [], "", None
    return cam_outputs(*_entry_and_target(image, target), opacity, scale)


@user_errors
def raw_maps(image: str | None, target: str, shown: bool = True) -> dict | None:
    """The four Grad-CAM maps of a class at their stage resolution, as nested lists; nothing while
    they are not ``shown`` (the browser would build a 22 KB JSON tree that nobody sees)."""
    if not shown:
        return gr.skip()
    if image is None:
        return None
    return raw_of(CACHE.entry(image), target)


def raw_of(entry: Entry, target: str) -> dict:
    """The raw maps of the class ``target`` names (or the predicted one) for an analysed image."""
    chosen = _chosen(entry, target)
    return _raw(chosen, CACHE.cams(entry, chosen))


def _raw(target: int, cams: dict[str, np.ndarray]) -> dict:
    return {"target": CLASSES[target], "maps": {name: m.tolist() for name, m in cams.items()}}


@user_errors
def gradcam_view(image: str | None, target: str, opacity: float, scale: str) -> tuple:
    """The overlays redrawn for a new opacity or colour scale: nothing is recomputed, nor the raw maps re-sent."""
    if image is None:
        return [], ""
    entry, chosen = _entry_and_target(image, target)
    return cam_view(entry, chosen, CACHE.cams(entry, chosen), opacity, scale)


@user_errors
def contrast(image: str | None, target: str, method: str, opacity: float) -> tuple:
    if image is None:
        return None, ""
    return _contrast_outputs(*_entry_and_target(image, target), method, opacity)


@user_errors
def contrast_view(image: str | None, target: str, method: str, opacity: float) -> tuple:
    """The contrast map redrawn at a new opacity from the map already computed, or nothing when
    it is not (the computation under way draws it): never computes, so it skips the queue."""
    if image is None:
        return None, ""
    entry, chosen = _entry_and_target(image, target)
    _check_method(method)
    if ("contrast", chosen, method) not in entry.extras:
        return gr.skip(), gr.skip()
    return _contrast_outputs(entry, chosen, method, opacity)


def _check_method(method: str) -> None:
    if method not in CONTRAST_METHODS:
        raise ValueError(f"Unknown method {method!r}; use one of {', '.join(CONTRAST_METHODS)}.")


def _contrast_outputs(entry: Entry, chosen: int, method: str, opacity: float) -> tuple:
    _check_method(method)
    attribution = _contrast_map(entry, chosen, method)
    return (
        webp_in_cache(render.overlay(entry.seen, attribution, opacity=float(opacity), size=DISPLAY)),
        f"**{method}** for **{CLASSES[chosen]}**: {CONTRAST_WHAT[method]}. "
        "Unlike Grad-CAM it does not look inside the network's stages.",
    )


def _contrast_map(entry: Entry, target: int, method: str) -> np.ndarray:
    # Computed once per image, class and method; the opacity slider only redraws it.
    return CACHE.memo(entry, ("contrast", target, method), lambda: contrast_map(SERVING, entry.input(), target, method))


def prepare(entry: Entry) -> None:
    """Warm-up for a shipped sample: every class's maps and the contrast map this tab shows first."""
    CACHE.every_class(entry)
    _contrast_map(entry, entry.predicted, CONTRAST_METHODS[0])


def build(ctx: Ctx) -> None:
    with gr.Tab("Grad-CAM", id="gradcam") as tab:
        gr.Markdown(
            "Grad-CAM (ReLU applied) at the output of each stage, for the class you choose: where the evidence "
            "for that class sits at each depth. All four maps come from one forward and one backward pass; every "
            "class's maps come with the image, so another class, opacity or colour scale is drawn at once, in your "
            "browser. The maps equal Captum's `LayerGradCam` (the tests hold the two equal)."
        )
        with gr.Row():
            target = gr.Dropdown(TARGET_CHOICES, value=PREDICTED, label="Explain class", scale=2, elem_id="gradcam-target")
            opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity", scale=2, elem_id="gradcam-opacity")
            scale = gr.Radio(list(SCALES), value="per map", label="Colour scale", scale=1, elem_id="gradcam-scale")
        cams = gr.HTML(None, html_template=camstrip.HTML, css_template=camstrip.CSS, js_on_load=camstrip.JS,
                       label="Grad-CAM overlays", elem_id=camstrip.ELEM_ID)
        with gr.Accordion("Raw Grad-CAM values (stage resolution)", open=False) as raw_box:
            raw = gr.JSON(label="maps", elem_id="gradcam-raw")
        # Inside the tab: a State among gr.Tabs' children shifts the tab bar (a tab drawn twice, one lost).
        raw_shown = gr.State(False)
        gr.Markdown("### For contrast: a method that does not look inside the stages")
        with gr.Row():
            with gr.Column(scale=1):
                method = gr.Radio(list(CONTRAST_METHODS), value=CONTRAST_METHODS[0], label="Method")
                contrast_note = gr.Markdown(label="contrast note", elem_id="contrast-note")
            contrast_image = gr.Image(label="Attribution", interactive=False, format="webp", height=256, scale=1,
                                      elem_id="contrast-image")
        # The API's answer is the overlays as image files: components only API calls fill.
        api_overlays = gr.Gallery(visible=False, format="webp")
        api_note = gr.Markdown(visible=False)
        api_gradcam, api_view = gr.Button(visible=False), gr.Button(visible=False)
    ctx.controls.update(target=target, opacity=opacity, scale=scale, raw_shown=raw_shown)
    ctx.outputs.update(cams=cams, cam_raw=raw, api_overlays=api_overlays, api_note=api_note)
    view = [ctx.image, target, opacity, scale]

    # A class, opacity or colour scale: the strip redraws itself in the browser, no request.
    gr.on([target.change, opacity.change, scale.change], None, inputs=[target, opacity, scale], js=camstrip.VIEW_JS,
          queue=False, api_visibility="private")
    # The raw values only while their panel is open (the browser would build a 22 KB JSON tree nobody sees).
    target.change(raw_maps, inputs=[ctx.image, target, raw_shown], outputs=[raw], api_name="gradcam_raw",
                  queue=False, show_progress="hidden")
    raw_box.expand(lambda: True, outputs=raw_shown, queue=False, api_visibility="private").then(
        raw_maps, inputs=[ctx.image, target, raw_shown], outputs=[raw], api_name="gradcam_raw_open",
        api_visibility="private", queue=False)
    raw_box.collapse(lambda: False, outputs=raw_shown, queue=False, api_visibility="private")

    contrast_inputs, contrast_outputs = [ctx.image, target, method, opacity], [contrast_image, contrast_note]
    gr.on([tab.select, method.change], contrast, inputs=contrast_inputs, outputs=contrast_outputs, api_name="contrast")
    # The slider redraws the contrast map too, from the map computed: beside the overlays, not behind the queue.
    opacity.release(contrast_view, inputs=contrast_inputs, outputs=contrast_outputs, api_name="contrast_view",
                    api_visibility="private", queue=False)
    target.change(contrast, inputs=contrast_inputs, outputs=contrast_outputs, api_name="contrast_for_target",
                  api_visibility="private")
    # A new image while this tab is on screen: its contrast map (Integrated Gradients costs several full
    # analyses on this CPU, so images browsed from another tab do not pay for it; opening the tab does).
    ctx.follow("gradcam", contrast, inputs=[target, method, opacity], outputs=[contrast_image, contrast_note])

    api_gradcam.click(gradcam, inputs=view, outputs=[api_overlays, api_note, raw], api_name="gradcam")
    api_view.click(gradcam_view, inputs=view, outputs=[api_overlays, api_note], api_name="gradcam_view", queue=False)
