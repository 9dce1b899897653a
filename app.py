"""ResNet-50 on CIFAR-10, explained: the Gradio explorer.

``python app.py`` serves it (honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT);
the same file is a Hugging Face Space's ``app_file``. This module only builds
the interface and wires events: the work is done by pure functions in
``resnet.explain`` / ``resnet.preprocess`` (arrays in, arrays out) and the
figures by ``app_figures``.

Layout: a classify panel on top (upload, examples, top-k, what the network
saw), then one tab per view. Each tab is one ``build_*_tab(ctx)`` function in
``TABS``; to add a tab, write a builder and append it there. A tab that must
follow the current image takes ``ctx.image`` as an input and lists
``ctx.analysed.change`` among its triggers (it fires once per analysed image,
after the main ``analyze`` event, and not when that event refused the upload).
Every event gets an ``api_name``.
"""

from __future__ import annotations

import os

# No network at import or run time: no telemetry, no version check, no Hub.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import numpy as np
from PIL import Image

import app_figures as figs
from resnet import CLASSES, STAGE_NAMES
from resnet import explain, preprocess
from resnet.weights import ASSETS_DIR, load_pretrained

# Our own size check runs before decoding; this makes PIL refuse anything
# bigger too, in case some other code path opens an upload.
Image.MAX_IMAGE_PIXELS = preprocess.MAX_PIXELS

ASSETS = Path(os.environ.get("EXPLORER_ASSETS_DIR", ASSETS_DIR)).resolve()
MODEL, CARD = load_pretrained(ASSETS)
# Grad-CAM needs gradients of activations only; no weight ever needs one here.
MODEL.requires_grad_(False)
ARCHITECTURE = explain.architecture_table(MODEL)
DISPLAY = 256  # side in px of the enlarged 32x32 images
TOP_K = 5
PREDICTED = "predicted class"
TARGET_CHOICES = [PREDICTED, *CLASSES]
SCALES = ("per map", "shared")
BLOCK_NAMES = list(MODEL.blocks())
STRIDES = {f.name: f.stride for f in MODEL.feature_info}
CHANNELS = {f.name: f.channels for f in MODEL.feature_info}


def _samples() -> dict[str, Path]:
    """sha256 of the file -> path, for assets/samples/<class>_<k>.png in class order."""
    paths = sorted((ASSETS / "samples").glob("*.png"), key=lambda p: (_class_of(p), p.name))
    return {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in paths if _class_of(p) in CLASSES}


def _class_of(path: Path) -> str:
    return path.stem.rsplit("_", 1)[0]


SAMPLES = _samples()


def _truth(image: str, predicted: int) -> str:
    """The true class when the image is one of the shipped test images (matched by content)."""
    sample = SAMPLES.get(hashlib.sha256(Path(image).read_bytes()).hexdigest())
    if sample is None:
        return "True class: unknown (your own image)."
    true = _class_of(sample)
    verdict = "correct" if CLASSES[predicted] == true else f"wrong (predicted {CLASSES[predicted]})"
    return f"True class: **{true}** (CIFAR-10 test image `{sample.name}`): the prediction is {verdict}."


# ----- the upload component ------------------------------------------------------------------


class UploadImage(gr.Image):
    """gr.Image that passes the uploaded file's path on untouched.

    gr.Image's own preprocessing opens every upload with PIL and fails with a
    bare error on a non-image; ours hands the path to ``preprocess.load_image``,
    which checks bytes and header before any pixel is decoded and says what is
    wrong in a sentence. ``is_template`` keeps the stock Image front end.
    """

    is_template = True

    def preprocess(self, payload: Any) -> str | None:
        if payload is None:
            return None
        if getattr(payload, "path", None):
            return str(payload.path)
        return super().preprocess(payload)  # base64 data URL (webcam streaming)


# ----- handlers: thin glue from components to pure functions --------------------------------


def user_errors(fn: Callable) -> Callable:
    """Turn a bad upload or argument into a message for the user (and the API client)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except preprocess.ImageInputError as exc:
            raise gr.Error(str(exc), title="This image cannot be used") from None
        except ValueError as exc:
            raise gr.Error(str(exc), title="Invalid request") from None

    return wrapper


def _model_input(image: str | None, tell_user: bool = False) -> preprocess.ModelInput:
    img, notes = preprocess.load_image_with_notes(image)
    if tell_user:
        w, h = img.size
        if w != h:
            notes.append(f"The image is {w}x{h}; the network sees its centre {min(w, h)}x{min(w, h)} square, scaled to 32x32.")
        for note in notes:
            gr.Info(note)
    return preprocess.to_model_input(img)


def _target(choice: str | None) -> int | None:
    if choice in (None, "", PREDICTED):
        return None
    if choice not in CLASSES:
        raise ValueError(f"Unknown target class {choice!r}; use one of {', '.join(TARGET_CHOICES)}.")
    return CLASSES.index(choice)


def _enlarge(seen: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(seen).resize((DISPLAY, DISPLAY), Image.Resampling.NEAREST))


def _stage_caption(name: str, cam: np.ndarray) -> str:
    h, w = cam.shape
    return f"{name} · {h}x{w} · max {float(cam.max()):.2g}"


def _cam_outputs(result: explain.Analysis, seen: np.ndarray, opacity: float, scale: str) -> tuple:
    if scale not in SCALES:
        raise ValueError(f"Colour scale must be one of {', '.join(SCALES)}; got {scale!r}.")
    if not 0.0 <= float(opacity) <= 1.0:
        raise ValueError(f"Opacity must be between 0 and 1; got {opacity}.")
    shared = max(float(m.max()) for m in result.cams.values())
    gallery = []
    for name in STAGE_NAMES:
        cam = result.cams[name]
        vmax = shared if scale == "shared" else float(cam.max())
        gallery.append((explain.overlay(seen, cam, opacity=float(opacity), vmax=vmax, size=DISPLAY), _stage_caption(name, cam)))
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


def _feature_figures(result: explain.Analysis, n: int) -> list:
    out = []
    for name in ("stem", *STAGE_NAMES):
        top = explain.top_channels(result.features[name], int(n))
        out.append(figs.feature_grid(name, top.indices, top.maps, STRIDES[name], CHANNELS[name]))
    return out


N_FEATURE_PLOTS = 5


def _blank_analysis() -> tuple:
    return (None, "", None, [], "", None, *([None] * N_FEATURE_PLOTS))


@user_errors
def classify(image: str | None) -> dict[str, float]:
    """Top-5 classes with their probabilities for one image."""
    x = _model_input(image)
    return explain.top_k(explain.predict_probs(MODEL, x.tensor), TOP_K)


@user_errors
def analyze(image: str | None, target: str, opacity: float, scale: str, n_channels: float) -> tuple:
    """Everything for a new image from one forward + backward pass."""
    if image is None:
        return _blank_analysis()
    x = _model_input(image, tell_user=True)
    result = explain.analyze(MODEL, x.tensor, _target(target))
    return (
        result.top_k(TOP_K),
        _truth(image, result.predicted),
        _enlarge(x.seen),
        *_cam_outputs(result, x.seen, opacity, scale),
        *_feature_figures(result, n_channels),
    )


@user_errors
def gradcam(image: str | None, target: str, opacity: float, scale: str) -> tuple:
    """Grad-CAM overlays of layer1..layer4 for a target class, and the raw maps."""
    if image is None:
        return [], "", None
    x = _model_input(image)
    return _cam_outputs(explain.analyze(MODEL, x.tensor, _target(target)), x.seen, opacity, scale)


@user_errors
def feature_maps(image: str | None, n_channels: float) -> list:
    if image is None:
        return [None] * N_FEATURE_PLOTS
    x = _model_input(image)
    return _feature_figures(explain.analyze(MODEL, x.tensor), n_channels)


@user_errors
def block_anatomy(image: str | None, block: str, view: str, channel: float) -> tuple:
    if image is None:
        return None, None
    if block not in BLOCK_NAMES:
        raise ValueError(f"Unknown block {block!r}; blocks are {BLOCK_NAMES[0]} .. {BLOCK_NAMES[-1]}.")
    x = _model_input(image)
    chosen = None
    if view == "one channel":
        channels = CHANNELS[block.split(".")[0]]
        chosen = int(channel)
        if chosen >= channels:
            gr.Warning(f"Block {block} has {channels} channels (0..{channels - 1}); showing channel {channels - 1}.")
            chosen = channels - 1
    anatomy = explain.residual_anatomy(MODEL, x.tensor, block, chosen)
    return (
        figs.anatomy_figure(anatomy.block, anatomy.maps, anatomy.channel),
        figs.ratio_bar(anatomy.names, anatomy.ratios, anatomy.block),
    )


@user_errors
def contrast(image: str | None, target: str, method: str, opacity: float) -> tuple:
    if image is None:
        return None, ""
    x = _model_input(image)
    t = _target(target)
    if t is None:
        t = int(np.argmax(explain.predict_probs(MODEL, x.tensor)))
    attribution = explain.contrast_map(MODEL, x.tensor, t, method)
    what = {
        "Integrated Gradients": "pixel-level: |gradient x (image - mean image)| integrated along the path, summed over RGB",
        "Occlusion": "how much the logit drops when an 8x8 patch is greyed out (stride 4)",
    }[method]
    return (
        explain.overlay(x.seen, attribution, opacity=float(opacity), size=DISPLAY),
        f"**{method}** for **{CLASSES[t]}**: {what}. Unlike Grad-CAM it does not look inside the network's stages.",
    )


# ----- layout ----------------------------------------------------------------------------------


@dataclass
class Ctx:
    """What tab builders share: the input image and the component that changes
    once per analysed image (hook follow-up work onto ``analysed.change``)."""

    image: gr.Image
    analysed: gr.Image  # the 32x32 image the model saw; changes after each analysis
    controls: dict[str, gr.components.Component] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)


def _header_markdown() -> str:
    acc = CARD.get("test_accuracy")
    acc_text = f"{acc * 100:.2f}% test accuracy" if isinstance(acc, (int, float)) else "test accuracy not measured"
    notes = CARD.get("notes", "")
    return (
        "# ResNet-50 on CIFAR-10, explained\n"
        "A ResNet-50 trained from scratch on 32x32 CIFAR-10 images "
        f"({acc_text}, {CARD.get('dataset', 'CIFAR-10')}). Upload any image or pick a test image: "
        "see what it predicts, where each stage looks (Grad-CAM), what the feature maps hold and "
        "how much every residual block changes its input."
        + (f"\n\n> **Note on these weights:** {notes}" if notes else "")
    )


def build_classify_panel() -> Ctx:
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            image = UploadImage(
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
    ctx = Ctx(image=image, analysed=seen)
    ctx.outputs.update(label=label, truth=truth)
    classify_button = gr.Button("classify", visible=False)
    classify_button.click(classify, inputs=[image], outputs=[label], api_name="classify")
    return ctx


def build_gradcam_tab(ctx: Ctx) -> None:
    with gr.Tab("Grad-CAM at every stage", id="gradcam"):
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
                method = gr.Radio(list(explain.CONTRAST_METHODS), value=explain.CONTRAST_METHODS[0], label="Method")
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
        [ctx.analysed.change, method.change, target.change],
        contrast,
        inputs=[ctx.image, target, method, opacity],
        outputs=[contrast_image, contrast_note],
        api_name="contrast",
    )


def build_features_tab(ctx: Ctx) -> None:
    with gr.Tab("Feature maps", id="features"):
        n = gr.Slider(1, 64, value=16, step=1, label="Channels per stage (most active first, by mean activation)")
        gr.Markdown("Each panel is one channel; all panels of a stage share one colour scale. Hover for channel and value.")
        plots = [gr.Plot(label=name, elem_classes=["feature-plot"]) for name in ("stem", *STAGE_NAMES)]
    ctx.controls["n_channels"] = n
    ctx.outputs["feature_plots"] = plots
    n.release(feature_maps, inputs=[ctx.image, n], outputs=plots, api_name="feature_maps")


def build_blocks_tab(ctx: Ctx) -> None:
    with gr.Tab("Inside a residual block", id="blocks"):
        with gr.Row():
            block = gr.Dropdown(BLOCK_NAMES, value=BLOCK_NAMES[0], label="Bottleneck block (16)")
            view = gr.Radio(["channel mean", "one channel"], value="channel mean", label="Show")
            channel = gr.Slider(0, 2047, value=0, step=1, label="Channel (for 'one channel')")
        gr.Markdown(
            "Each bottleneck block computes a correction F(x) and adds it to its input x (or to a 1x1 "
            "projection of x where the shape changes), so its output is ReLU(F(x) + x). The bar chart shows, "
            "for this image, how large each block's correction is next to x: near 0 the block passes its "
            "input through almost unchanged, near 1 or above it rewrites it."
        )
        anatomy = gr.Plot(label="x, F(x), F(x) + x, ReLU(F(x) + x)", elem_classes=["anatomy-plot"])
        ratios = gr.Plot(label="||F(x)|| / ||x|| over all 16 blocks", elem_classes=["anatomy-plot"])
    gr.on(
        [ctx.analysed.change, block.change, view.change, channel.release],
        block_anatomy,
        inputs=[ctx.image, block, view, channel],
        outputs=[anatomy, ratios],
        api_name="block_anatomy",
    )


def build_training_tab(ctx: Ctx) -> None:
    with gr.Tab("Training curves", id="training"):
        history, why = figs.read_json(ASSETS / "history.json")
        if history is None:
            gr.Markdown(f"**Training curves not available.** {why}", elem_id="training-missing")
            return
        try:
            figure = figs.training_figure(history)
        except (KeyError, TypeError, ValueError) as exc:
            gr.Markdown(f"**Training curves not available.** `history.json` is incomplete ({exc}).", elem_id="training-missing")
            return
        gr.Markdown(figs.training_summary(history))
        gr.Plot(figure, label="Loss, accuracy and learning rate per epoch", elem_id="training-plot")


def build_model_tab(ctx: Ctx) -> None:
    with gr.Tab("The model", id="model"):
        gr.Markdown("### Architecture (computed from the model on a 32x32 input)")
        gr.Markdown(figs.architecture_markdown(ARCHITECTURE), elem_id="architecture")
        gr.Markdown("### Model card")
        gr.Markdown(figs.card_markdown(CARD), elem_id="model-card")


# Add a tab: write build_x_tab(ctx) and append it here (order = order on the page).
TABS: list[Callable[[Ctx], None]] = [
    build_gradcam_tab,
    build_features_tab,
    build_blocks_tab,
    build_training_tab,
    build_model_tab,
]


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="ResNet-50 on CIFAR-10, explained", analytics_enabled=False) as demo:
        gr.Markdown(_header_markdown())
        ctx = build_classify_panel()
        with gr.Tabs():
            for build_tab in TABS:
                build_tab(ctx)
        c, o = ctx.controls, ctx.outputs
        # One forward + backward answers the prediction, the four Grad-CAMs
        # and the feature maps; the other tabs follow on ctx.analysed.change.
        ctx.image.change(
            analyze,
            inputs=[ctx.image, c["target"], c["opacity"], c["scale"], c["n_channels"]],
            outputs=[o["label"], o["truth"], ctx.analysed, o["cams"], o["cam_note"], o["cam_raw"], *o["feature_plots"]],
            api_name="analyze",
        )
    # Two requests at a time on a 2-core CPU; a bounded queue answers "busy"
    # instead of piling up work.
    demo.queue(default_concurrency_limit=2, max_size=32)
    return demo


demo = build_demo()

if __name__ == "__main__":
    demo.launch(
        allowed_paths=[str(ASSETS)],  # the examples; nothing else on disk is served
        max_file_size=preprocess.MAX_BYTES,
        ssr_mode=False,
        show_error=False,
    )
