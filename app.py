"""ResNet-50 on CIFAR-10, explained: the Gradio explorer.

``python app.py`` serves it (honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT);
the same file is a Hugging Face Space's ``app_file``. This module only builds
the interface and wires events: the work is done by pure functions in
``resnet.explain`` / ``resnet.preprocess`` / ``resnet.testset`` /
``resnet.robustness`` / ``resnet.sanity`` (arrays in, arrays out) and the
figures by ``app_figures`` and ``app_insights_figures``.

Layout: a classify panel on top (upload, examples, top-k, what the network
saw), then one tab per view. Each tab is one ``build_*_tab(ctx)`` function in
``TABS``; to add a tab, write a builder and append it there. A tab that must
follow the current image takes ``ctx.image`` as an input and lists
``ctx.analysed.change`` among its triggers (it fires once per analysed image,
after the main ``analyze`` event, and not when that event refused the upload).
Every event gets an ``api_name``.

The insight tabs (Robustness, Sanity check, Test set, Calibration) never add
work to ``analyze``: they compute when their tab is selected or a control
asks. A new image recomputes the image-based ones only while their tab is on
screen (``ctx.open_tab``) and otherwise clears them, so nothing stale shows.
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
import app_insights_figures as insight_figs
from resnet import CLASSES, STAGE_NAMES
from resnet import explain, preprocess, robustness, sanity, testset
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
# Read on first use (the Test set / Calibration tabs), so a missing file costs the Classify panel nothing.
TEST_SET = testset.TestSet(ASSETS)
THUMB = 96  # side in px of the test-set gallery thumbnails


def _samples() -> dict[str, Path]:
    """sha256 of the file -> path, for assets/samples/<class>_<k>.png in class order."""
    paths = sorted((ASSETS / "samples").glob("*.png"), key=lambda p: (_class_of(p), p.name))
    return {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in paths if _class_of(p) in CLASSES}


def _class_of(path: Path) -> str:
    return path.stem.rsplit("_", 1)[0]


SAMPLES = _samples()


def _sample_of(image: str) -> Path | None:
    """The shipped test image with exactly these bytes, if any."""
    return SAMPLES.get(hashlib.sha256(Path(image).read_bytes()).hexdigest())


def _known_label(image: str) -> int | None:
    """The true class index when the image is one of the shipped samples, else None."""
    sample = _sample_of(image)
    return None if sample is None else CLASSES.index(_class_of(sample))


def _truth(image: str, predicted: int) -> str:
    """The true class when the image is one of the shipped test images (matched by content)."""
    sample = _sample_of(image)
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


# ----- insight handlers: test set, calibration, robustness, sanity --------------------------
# Each tab computes only when it is opened or asked (never as part of ``analyze``).

NO_IMAGE = "No image yet: pick one of the test images above or upload your own, then come back here."


def _no_image() -> None:
    gr.Warning(NO_IMAGE, title="No image")


def _thumb(image: np.ndarray, side: int = THUMB) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((side, side), Image.Resampling.NEAREST))


def _pair_overlays(images: tuple[np.ndarray, np.ndarray], cams: tuple[np.ndarray, np.ndarray],
                   captions: tuple[str, str]) -> list[tuple[np.ndarray, str]]:
    """Two Grad-CAM overlays on one colour scale, so their strengths compare."""
    vmax = max(float(c.max()) for c in cams)
    return [(explain.overlay(im, cam, vmax=vmax, size=DISPLAY), cap) for im, cam, cap in zip(images, cams, captions)]


def _check_stage(stage: str) -> str:
    if stage not in STAGE_NAMES:
        raise ValueError(f"Unknown Grad-CAM layer {stage!r}; use one of {', '.join(STAGE_NAMES)}.")
    return stage


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
        insight_figs.test_set_markdown(testset.accuracy_summary(ev)),
        insight_figs.confusion_matrix_figure(ev, normalise=bool(normalise)),
        insight_figs.per_class_accuracy_figure(ev),
        gr.Dropdown(choices=testset.pair_choices(ev), value=first),
        True,
    )


@user_errors
def confusion_matrix(normalise: bool):
    ev = _evaluation()
    return None if ev is None else insight_figs.confusion_matrix_figure(ev, normalise=bool(normalise))


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
        testset.gallery_summary(TEST_SET, true, pred),
        None,
    )


@user_errors
def test_image_cams(row: float | None, stage: str) -> tuple:
    """One shipped test image: Grad-CAM for the class the model predicted and for the true class."""
    if row is None or row == "":
        return None, [], ""
    stage = _check_stage(stage)
    if float(row) != int(float(row)):
        raise ValueError(f"A test image number is a whole number; got {row}.")
    row = int(float(row))
    record = TEST_SET.record(row)
    image = TEST_SET.image(row)
    x = preprocess.to_model_input(Image.fromarray(image)).tensor
    pred = explain.gradcam_all_stages(MODEL, x, record["pred"])
    true = pred if record["correct"] else explain.gradcam_all_stages(MODEL, x, record["label"])
    cams = _pair_overlays(
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
    return _enlarge(image), cams, note


def select_test_image(rows: list[int], stage: str, evt: gr.SelectData) -> tuple:
    """Gallery click -> that image's row and its two Grad-CAMs."""
    if not rows or not isinstance(evt.index, int) or not 0 <= evt.index < len(rows):
        return None, None, [], ""
    row = rows[evt.index]
    return row, *test_image_cams(row, stage)


@user_errors
def calibration(loaded: bool) -> tuple:
    """Reliability diagram (and after temperature scaling), confidence histogram, and what they say."""
    if loaded:
        return (gr.skip(),) * 4
    try:
        ev = TEST_SET.evaluation
    except testset.TestSetError as exc:
        return f"**Calibration is not available.** {exc}", None, None, False
    return (
        insight_figs.calibration_markdown(ev),
        insight_figs.reliability_figure(ev),
        insight_figs.confidence_histogram_figure(ev),
        True,
    )


N_PROBE_OUTPUTS = 5  # perturbed image, clean top-k, perturbed top-k, Grad-CAM pair, note


def _reference(image: str, probs: np.ndarray) -> tuple[int, str]:
    """The class whose confidence the probe follows: the true one for a shipped sample, else the clean prediction."""
    known = _known_label(image)
    if known is not None:
        return known, f"**{CLASSES[known]}**, the true class of this CIFAR-10 test image"
    pred = int(np.argmax(probs))
    return pred, f"**{CLASSES[pred]}**, the model's prediction for the clean image (the true class of your own image is unknown)"


@user_errors
def robustness_probe(image: str | None, noise: float, blur_sigma: float, brightness: float, contrast: float,
                     patch_size: float, patch_x: float, patch_y: float, fgsm_levels: float, stage: str) -> tuple:
    """Perturb the current image as the sliders say; top-k and Grad-CAM before and after."""
    if image is None:
        _no_image()
        return (None,) * 4 + ("",)
    stage = _check_stage(stage)
    x = _model_input(image)
    ref, ref_text = _reference(image, explain.predict_probs(MODEL, x.tensor))
    out = robustness.probe(
        MODEL, x.seen, true_label=ref, fgsm_epsilon=float(fgsm_levels) / 255.0, k=TOP_K,
        noise=float(noise), blur_sigma=float(blur_sigma), brightness=float(brightness), contrast=float(contrast),
        patch_size=int(patch_size), patch_x=int(patch_x), patch_y=int(patch_y),
    )
    cams = _pair_overlays(
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
    return _enlarge(out["image"]), out["clean_top_k"], out["top_k"], cams, note


@user_errors
def robustness_sweep(image: str | None, kind: str, patch_x: float, patch_y: float) -> tuple:
    """P(reference class) as one perturbation grows from 0, in one batched pass."""
    if image is None:
        _no_image()
        return None, ""
    if kind not in robustness.SWEEP_KINDS:
        raise ValueError(f"Unknown perturbation {kind!r}; choose one of {', '.join(robustness.SWEEP_KINDS)}.")
    x = _model_input(image)
    ref, ref_text = _reference(image, explain.predict_probs(MODEL, x.tensor))
    options = {"x": int(patch_x), "y": int(patch_y)} if kind == "occlusion" else {}
    points = robustness.sweep(MODEL, x.seen, kind, None, ref, **options)
    flips = [p.strength for p in points if p.pred != points[0].pred]
    where = (f"the top-1 first changes (to {CLASSES[next(p.pred for p in points if p.pred != points[0].pred)]}) "
             f"at {_strength(kind, flips[0])}" if flips else "the top-1 never changes over this range")
    unit = robustness.STRENGTH_UNITS[kind]
    return (
        insight_figs.robustness_line_figure(points, kind, ref),
        f"{kind}: {len(points)} strengths of {unit} from {_strength(kind, points[0].strength)} to "
        f"{_strength(kind, points[-1].strength)}; {where}. Reference class: {ref_text}.",
    )


def _strength(kind: str, value: float) -> str:
    return f"{value * 255:.0f}/255" if kind == "fgsm" else f"{value:.3g}"


@user_errors
def sanity_check(image: str | None, cascade: bool, stage: str) -> tuple:
    """Grad-CAM with the trained weights vs with layer4 (or layer4..layer1) re-initialised."""
    if image is None:
        _no_image()
        return [], None, "", None
    stage = _check_stage(stage)
    x = _model_input(image)
    stages = tuple(reversed(STAGE_NAMES)) if cascade else ("layer4",)
    result = sanity.sanity_check(MODEL, x.tensor, None, stages=stages)
    target = CLASSES[result["target"]]
    trained = result["trained"]["maps"][stage]
    gallery = [(explain.overlay(x.seen, trained, size=DISPLAY), f"trained weights · {stage} · max {float(trained.max()):.2g}")]
    lines = [
        f"Grad-CAM at **{stage}** for **{target}** (the trained model's prediction), with the trained weights and "
        f"with {'one more stage re-initialised per step, from layer4 down' if cascade else 'layer4 re-initialised'} "
        "(the fc layer keeps its trained weights). Each map has its own colour scale: rank correlation ignores scale."
    ]
    summary = {"target": target, "stage": stage, "steps": []}
    for step in result["steps"]:
        name = "+".join(step["randomised"])
        cam = step["maps"][stage]
        metrics = step["metrics"][stage]
        gallery.append((explain.overlay(x.seen, cam, size=DISPLAY), f"{name} re-initialised · max {float(cam.max()):.2g}"))
        now = int(np.argmax(step["probs"]))
        lines.append(f"- **{name} re-initialised** (now predicts {CLASSES[now]}): {sanity.verdict(metrics)}")
        summary["steps"].append({
            "randomised": step["randomised"],
            "spearman": _finite_or_none(metrics["spearman"]),
            "pearson": _finite_or_none(metrics["pearson"]),
            "top_overlap": float(metrics["top_overlap"]),
            "trained_flat": bool(metrics["trained_flat"]),
            "randomised_flat": bool(metrics["randomised_flat"]),
            "verdict": sanity.verdict(metrics),
            "predicted_after": CLASSES[now],
        })
    return gallery, insight_figs.sanity_figure(result), "\n".join(lines), summary


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN: an undefined correlation (a flat map) becomes null."""
    return float(value) if np.isfinite(value) else None


def opened(tab_id: str) -> Callable[[], str]:
    """Event handler that records which tab is open (for follow-ups of a new image)."""

    def remember() -> str:
        return tab_id

    return remember


@user_errors
def robustness_follow(image: str | None, open_tab: str, *settings: Any) -> tuple:
    """A new image: redo the probe and the sweep if their tab is open, else clear them (they compute when opened)."""
    if open_tab != "robustness" or image is None:
        return (None,) * 4 + ("",) + (None, "")
    *probe_settings, kind = settings
    patch_x, patch_y = probe_settings[5], probe_settings[6]
    return (*robustness_probe(image, *probe_settings), *robustness_sweep(image, kind, patch_x, patch_y))


def sanity_follow(image: str | None, open_tab: str, cascade: bool, stage: str) -> tuple:
    """A new image: redo the check if its tab is open, else clear the old image's result."""
    if open_tab != "sanity" or image is None:
        return [], None, "", None
    return sanity_check(image, cascade, stage)


# ----- layout ----------------------------------------------------------------------------------


@dataclass
class Ctx:
    """What tab builders share: the input image, the component that changes
    once per analysed image (hook follow-up work onto ``analysed.change``) and
    the id of the tab on screen (so a follow-up can skip a hidden tab)."""

    image: gr.Image
    analysed: gr.Image  # the 32x32 image the model saw; changes after each analysis
    open_tab: gr.State  # id of the tab on screen: follow-ups skip work for hidden tabs
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
    ctx = Ctx(image=image, analysed=seen, open_tab=gr.State("gradcam"))
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


def build_robustness_tab(ctx: Ctx) -> None:
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
    ctx.analysed.change(
        robustness_follow,
        inputs=[ctx.image, ctx.open_tab, *sliders, stage, kind],
        outputs=[*probe_outputs, line, sweep_note],
        api_name="robustness_follow",
        api_visibility="private",
    )


def build_sanity_tab(ctx: Ctx) -> None:
    with gr.Tab("Sanity check", id="sanity"):
        gr.Markdown(
            "Does the Grad-CAM depend on what the model learned? The model-randomisation check of Adebayo et al. "
            "(2018, *Sanity Checks for Saliency Maps*): recompute the map with the last stage's weights "
            "re-initialised (He init, fresh BatchNorm) and compare the two maps by Spearman rank correlation. "
            "A map that survives random weights (high correlation) explains the image or the architecture, "
            "not the model. Cascade re-initialises layer4, then layer4+layer3, and so on down to layer1."
        )
        with gr.Row():
            cascade = gr.Checkbox(False, label="Cascade: layer4, then layer3, layer2, layer1 too")
            stage = gr.Radio(list(STAGE_NAMES), value="layer4", label="Compare the Grad-CAM at")
            run = gr.Button("Run the sanity check", variant="primary", elem_id="sanity-button")
        maps = gr.Gallery(label="Grad-CAM: trained vs re-initialised", columns=5, rows=1,
                          object_fit="contain", format="png", allow_preview=False, elem_id="sanity-gallery")
        verdict = gr.Markdown(elem_id="sanity-verdict")
        figure = gr.Plot(label="Spearman rank correlation per Grad-CAM layer", elem_id="sanity-plot")
        with gr.Accordion("Numbers", open=False):
            numbers = gr.JSON(label="metrics")
    outputs = [maps, figure, verdict, numbers]
    run.click(sanity_check, inputs=[ctx.image, cascade, stage], outputs=outputs, api_name="sanity_check")
    ctx.analysed.change(sanity_follow, inputs=[ctx.image, ctx.open_tab, cascade, stage], outputs=outputs,
                        api_name="sanity_follow", api_visibility="private")


def build_test_set_tab(ctx: Ctx) -> None:
    with gr.Tab("Test set", id="testset") as tab:
        gr.Markdown(
            "Where does the model fail? The confusion matrix counts all 10,000 test images (rows: true class, "
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


def build_calibration_tab(ctx: Ctx) -> None:
    with gr.Tab("Calibration", id="calibration") as tab:
        gr.Markdown(
            "How sure is the model when it is wrong? The reliability diagram bins the 10,000 test predictions by "
            "confidence (the top softmax probability) and plots each bin's accuracy: a calibrated model sits on "
            "the diagonal. The expected calibration error (ECE) is the gap, weighted by how many images each bin holds."
        )
        text = gr.Markdown(elem_id="calibration-summary")
        reliability = gr.Plot(label="Reliability diagram", elem_id="reliability-plot")
        histogram = gr.Plot(label="Confidence of right and wrong predictions", elem_id="confidence-plot")
        loaded = gr.State(False)
    tab.select(calibration, inputs=[loaded], outputs=[text, reliability, histogram, loaded], api_name="calibration")


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
    build_robustness_tab,
    build_sanity_tab,
    build_test_set_tab,
    build_calibration_tab,
    build_training_tab,
    build_model_tab,
]


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="ResNet-50 on CIFAR-10, explained", analytics_enabled=False) as demo:
        gr.Markdown(_header_markdown())
        ctx = build_classify_panel()
        with gr.Tabs() as tabs:
            for build_tab in TABS:
                build_tab(ctx)
        for tab in tabs.children:
            tab.select(opened(tab.id), outputs=[ctx.open_tab], queue=False, api_name=f"open_{tab.id}",
                       api_visibility="private")
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
