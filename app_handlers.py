"""What the explorer's events call: thin glue from Gradio components to pure functions.

The model, its card and the sample index are loaded once, here, at import;
each handler turns component values into a call of ``resnet.explain`` /
``resnet.preprocess`` / ``resnet.testset`` / ``resnet.robustness`` /
``resnet.sanity`` and the figure builders of ``app_figures`` /
``app_insights_figures``, and turns a bad input into a ``gr.Error`` sentence.
Nothing here builds a layout: that is ``app.py``.
"""

from __future__ import annotations

import os

# No network at import or run time: no telemetry, no version check, no Hub.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")

import functools
import hashlib
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


def _feature_figures(features: dict[str, np.ndarray], n: int) -> list:
    out = []
    for name in ("stem", *STAGE_NAMES):
        top = explain.top_channels(features[name], int(n))
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
        *_feature_figures(result.features, n_channels),
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
    # A new channel count needs the activations only: no Grad-CAM backward pass.
    return _feature_figures(explain.stage_features(MODEL, x.tensor), n_channels)


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
        "Occlusion": "how much the logit drops when an 8x8 patch is replaced by the data set's mean colour (stride 4)",
    }[method]
    return (
        explain.overlay(x.seen, attribution, opacity=float(opacity), size=DISPLAY),
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


def training_curves() -> tuple[str, Any]:
    """The Training tab: a summary and the curves from history.json, or why there are none."""
    history, why = figs.read_json(ASSETS / "history.json")
    if history is None:
        return f"**Training curves not available.** {why}", None
    try:
        figure = figs.training_figure(history)
    except (KeyError, TypeError, ValueError) as exc:
        return f"**Training curves not available.** `history.json` is incomplete ({exc}).", None
    return figs.training_summary(history), figure


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
        testset.gallery_summary(TEST_SET, true, pred, shown=len(items)),
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


def _reference(image: str, x: preprocess.ModelInput) -> tuple[int, str]:
    """The class whose confidence the probe follows: the true one for a shipped sample, else the clean prediction."""
    known = _known_label(image)
    if known is not None:
        return known, f"**{CLASSES[known]}**, the true class of this CIFAR-10 test image"
    pred = int(np.argmax(explain.predict_probs(MODEL, x.tensor)))  # only paid for the user's own images
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
    ref, ref_text = _reference(image, x)
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
    ref, ref_text = _reference(image, x)
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
    noise, blur_sigma, brightness, contrast_, patch_size, patch_x, patch_y, fgsm_levels, stage, kind = settings
    probe = robustness_probe(image, noise, blur_sigma, brightness, contrast_, patch_size, patch_x, patch_y, fgsm_levels, stage)
    return (*probe, *robustness_sweep(image, kind, patch_x, patch_y))


def sanity_follow(image: str | None, open_tab: str, cascade: bool, stage: str) -> tuple:
    """A new image: redo the check if its tab is open, else clear the old image's result."""
    if open_tab != "sanity" or image is None:
        return [], None, "", None
    return sanity_check(image, cascade, stage)


