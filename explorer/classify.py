"""The classify panel on top of the page, and the one analysis every new image gets.

A new image is answered by one forward pass and one batched backward
(``analyze_view``): the top-5, the true class for a shipped sample, what the
network saw and every class's Grad-CAM maps, which the page draws itself
(``camstrip``). Then one event runs every tab's follower (``Ctx.follow``):
only the tab on screen computes, from the same cached pass. ``analyze`` is the
API's version, with the four overlays of one class as image files.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from insight.gradcam import top_k
from resnet import CLASSES

from .cache import Entry
from .context import CACHE, SAMPLES, TOP_K, enlarge, target_index, truth, user_errors
from .tabs.gradcam import cam_outputs, raw_of, strip
from .ui import OPEN_TAB_JS, Ctx, UploadImage

# The example the page opens on, already analysed (the first shipped sample).
OPENING: Path | None = next(iter(SAMPLES.values()), None)


def build_panel() -> Ctx:
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            image = UploadImage(
                value=None if OPENING is None else str(OPENING),
                type="filepath",
                image_mode=None,  # keep the file as uploaded; preprocess.load_image converts
                sources=["upload", "webcam", "clipboard"],
                label="Your image (any size; centre-cropped to a square)",
                height=300,
                elem_id="input-image",
            )
            if SAMPLES:
                gr.Examples(
                    examples=[[str(p)] for p in SAMPLES.values()],
                    inputs=[image],
                    label=f"{len(SAMPLES)} CIFAR-10 test images, {len(SAMPLES) // len(CLASSES)} per class in the order "
                    f"{', '.join(CLASSES)}: click one (its true class appears under the prediction)",
                    examples_per_page=len(SAMPLES),
                    elem_id="samples",
                )
        with gr.Column(scale=2):
            seen = gr.Image(
                label="What the network sees (32x32, enlarged)",
                interactive=False,
                format="png",
                height=256,
                elem_id="seen-image",
            )
            label = gr.Label(num_top_classes=TOP_K, label="Prediction (top 5)", elem_id="prediction")
            truth = gr.Markdown(label="true class", elem_id="true-class")
    # The tab on screen, as the browser reports it (ui.OPEN_TAB_JS); "gradcam" until the tabs are drawn.
    ctx = Ctx(image=image, analysed=seen, open_tab=gr.Textbox("gradcam", visible=False))
    ctx.outputs.update(label=label, truth=truth)
    classify_button = gr.Button("classify", visible=False)
    classify_button.click(classify, inputs=[image], outputs=[label], api_name="classify")
    return ctx


def _blank_analysis() -> tuple:
    return (None, "", None, [], "", None)


def _blank_view() -> tuple:
    return (None, "", None, None, None)


@user_errors
def classify(image: str | None) -> dict[str, float]:
    """Top-5 classes with their probabilities for one image."""
    return top_k(CACHE.entry(image).probs, TOP_K)


def tell_user(entry: Entry) -> None:
    """Toasts for what was done to the upload before the network saw it."""
    w, h = entry.size
    notes = list(entry.notes)
    if w != h:
        notes.append(f"The image is {w}x{h}; the network sees its centre {min(w, h)}x{min(w, h)} square, scaled to 32x32.")
    for note in notes:
        gr.Info(note)


@user_errors
def analyze(image: str | None, target: str, opacity: float, scale: str) -> tuple:
    """The top-5, the true class and the four Grad-CAM maps of a new image: one forward and
    one backward pass, or none when the image was analysed before (the cache)."""
    if image is None:
        return _blank_analysis()
    entry = CACHE.entry(image)
    tell_user(entry)
    chosen = target_index(target)
    return (
        top_k(entry.probs, TOP_K),
        truth(entry.key, entry.predicted),
        enlarge(entry.seen),
        *cam_outputs(entry, entry.predicted if chosen is None else chosen, opacity, scale),
    )


@user_errors
def analyze_view(image: str | None, target: str, opacity: float, scale: str, raw_shown: bool) -> tuple:
    """``analyze`` for the page: the top-5, the true class, what the network saw and the Grad-CAM
    strip (every class's maps, drawn in the browser); the raw values only while their panel is open."""
    if image is None:
        return _blank_view()
    entry = CACHE.entry(image)
    tell_user(entry)
    return (
        top_k(entry.probs, TOP_K),
        truth(entry.key, entry.predicted),
        enlarge(entry.seen),
        strip(entry, target, opacity, scale),
        raw_of(entry, target) if raw_shown else gr.skip(),
    )


def samples_to_warm() -> list[Path]:
    """The shipped samples, the opening example first."""
    return sorted(SAMPLES.values(), key=lambda p: p != OPENING)


def wire_analysis(ctx: Ctx, demo: gr.Blocks) -> None:
    """A new image: one forward and one batched backward answer the prediction and
    every class's Grad-CAMs; then one more event runs every tab's follower (only
    the tab on screen computes). The page opens on a worked example, answered
    from the warm cache."""
    c, o = ctx.controls, ctx.outputs
    view = [ctx.image, c["target"], c["opacity"], c["scale"]]
    inputs = [*view, c["raw_shown"]]
    outputs = [o["label"], o["truth"], ctx.analysed, o["cams"], o["cam_raw"]]
    # One event for the opening example and every new image: the browser runs an event one at a
    # time ("always_last": a trigger while it runs waits, then runs with the values of that moment),
    # so an opening answer arriving late never replaces a sample clicked meanwhile, as two events
    # writing the same outputs would.
    triggers = [ctx.image.change] + ([demo.load] if OPENING is not None else [])
    analysed = gr.on(triggers, analyze_view, inputs=inputs, outputs=outputs, api_name="analyze_view",
                     api_visibility="private", trigger_mode="always_last")
    # The API's analysis: the same, with the overlays as image files (components only API calls fill).
    api_button = gr.Button(visible=False)
    api_outputs = [o["label"], o["truth"], ctx.analysed, o["api_overlays"], o["api_note"], o["cam_raw"]]
    api_button.click(analyze, inputs=view, outputs=api_outputs, api_name="analyze")
    follow_inputs = [ctx.image, ctx.open_tab, *(c for f in ctx.followers for c in f.inputs)]
    follow_outputs = [c for f in ctx.followers for c in f.outputs]
    # Only after a successful analysis: a refused upload leaves every view as it was.
    analysed.success(ctx.follow_all, inputs=follow_inputs, outputs=follow_outputs, js=OPEN_TAB_JS,
                     api_name="follow", api_visibility="private", show_progress="minimal")
