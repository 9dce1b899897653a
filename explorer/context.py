"""What every view of the explorer shares: the loaded model and assets, and the glue helpers.

The model, its card, the architecture table and the sample index are loaded
once, here, at import. ``EXPLORER_ASSETS_DIR`` points the app at another assets
folder (the tests use it). The helpers turn component values into model inputs
and bad input into a ``gr.Error`` sentence; the tab modules call them.
"""

from __future__ import annotations

import os

# No network at import or run time: no telemetry, no version check, no Hub.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
# A server draws no windows: a fixed backend spares matplotlib (which Gradio and captum
# import) the search for one.
os.environ.setdefault("MPLBACKEND", "agg")

import functools  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import gradio as gr  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from insight import atlas, render, testset  # noqa: E402
from insight.architecture import architecture_table  # noqa: E402
from insight.prepacked import PassMaker  # noqa: E402
from resnet import CLASSES, STAGE_NAMES, preprocess  # noqa: E402
from resnet.model import fuse_batchnorm  # noqa: E402
from resnet.weights import ASSETS_DIR, WEIGHTS_FILE, Checkpoint, load_checkpoint, load_pretrained  # noqa: E402

from .cache import AnalysisCache  # noqa: E402

# Our own size check runs before decoding; this makes PIL refuse anything
# bigger too, in case some other code path opens an upload.
Image.MAX_IMAGE_PIXELS = preprocess.MAX_PIXELS

ASSETS = Path(os.environ.get("EXPLORER_ASSETS_DIR", ASSETS_DIR)).resolve()


def _user_weights(path: str | None) -> Checkpoint | None:
    """Weights trained elsewhere, or None when none are named or they are the shipped file itself."""
    if not path:
        return None
    shipped = ASSETS / WEIGHTS_FILE
    theirs = Path(path)
    if (shipped.is_file() and theirs.is_file() and shipped.stat().st_size == theirs.stat().st_size
            and shipped.read_bytes() == theirs.read_bytes()):
        return None
    return load_checkpoint(path)


# EXPLORER_WEIGHTS (what `python app.py --weights PATH` sets; a Space can set it
# too) explores a ResNet-50 trained elsewhere instead of the shipped one.
USER_WEIGHTS = _user_weights(os.environ.get("EXPLORER_WEIGHTS"))
MODEL, CARD = load_pretrained(ASSETS) if USER_WEIGHTS is None else (USER_WEIGHTS.model, USER_WEIGHTS.card())
# Why the views of this project's own training (curves, replay) have nothing to show; None for our weights.
NOT_OURS = (None if USER_WEIGHTS is None
            else f"These weights, {USER_WEIGHTS.describe()}, were not trained by this project")
# Grad-CAM needs gradients of activations only; no weight ever needs one here.
MODEL.requires_grad_(False)
# What the views compute with: the same function with every BatchNorm folded into its
# convolution, in channels_last (the layout CPU convolutions run fastest in). It has no
# BatchNorm parameters, so the model card, the architecture table and the sanity check
# (which re-initialises them) keep using MODEL.
SERVING = fuse_batchnorm(MODEL).to(memory_format=torch.channels_last).requires_grad_(False)
# How an image's prediction, activations and Grad-CAM are computed: autograd on SERVING
# until the server has started, then (PASSES.choose, in the background) SERVING's kernels
# laid out once for oneDNN with the backward pass written out, ~2/3 of autograd's time,
# where that engine agrees with autograd (PASSES.reason says why not otherwise).
PASSES = PassMaker(SERVING)
# Recent images' analyses, keyed by content: sliders and class changes reuse them.
CACHE = AnalysisCache(PASSES)
ARCHITECTURE = architecture_table(MODEL)
DISPLAY = 256  # side in px of the enlarged 32x32 images
TOP_K = 5
PREDICTED = "predicted class"
TARGET_CHOICES = [PREDICTED, *CLASSES]
BLOCK_NAMES = list(MODEL.blocks())
STRIDES = {f.name: f.stride for f in MODEL.feature_info}
CHANNELS = {f.name: f.channels for f in MODEL.feature_info}


class _UserTestSet(testset.TestSet):
    """The test-set files for weights trained elsewhere: only an evaluation given for them
    (EXPLORER_EVALUATION, `--evaluation DIR`), never the shipped weights' results."""

    def __init__(self, folder: str | None, weights: Checkpoint) -> None:
        super().__init__(folder or ASSETS)
        self.given, self.weights = bool(folder), weights

    @property
    def evaluation(self) -> dict[str, Any]:
        if not self.given:
            raise testset.TestSetError(
                f"These weights, {self.weights.describe()}, were not trained by this project, and the shipped "
                "test-set results belong to the shipped weights. To see them for these, "
                "start with `--evaluation DIR` (or EXPLORER_EVALUATION), DIR holding the evaluation.json and "
                "test_gallery.npz that `python -m train.evaluate --out DIR` writes for them."
            )
        ev = super().evaluation
        made_for = ev.get("weights_sha256")
        if made_for and made_for != self.weights.sha256:
            raise testset.TestSetError(
                f"The evaluation in {self.assets_dir} was made for other weights (sha256 {made_for[:12]}; "
                f"these are {self.weights.sha256[:12]})."
            )
        return ev


# Read on first use (the Test set / Calibration tabs), so a missing file costs the Classify panel nothing.
USER_EVALUATION = os.environ.get("EXPLORER_EVALUATION") or None
TEST_SET = testset.TestSet(ASSETS) if USER_WEIGHTS is None else _UserTestSet(USER_EVALUATION, USER_WEIGHTS)


def _served_weights_sha256() -> str | None:
    """sha256 of the weights this app serves: the atlas records which weights it describes."""
    if USER_WEIGHTS is not None:
        return USER_WEIGHTS.sha256
    shipped = ASSETS / WEIGHTS_FILE
    return atlas.sha256_of(shipped) if shipped.is_file() else None


# Hashed once, on first use: the atlas and the lesion study say which weights they describe.
served_sha256 = functools.cache(_served_weights_sha256)
# The channel atlas (Feature maps tab), read the first time that tab opens.
ATLAS = atlas.LazyAtlas(ASSETS / atlas.ATLAS_FILE, served_sha256)


def _samples() -> dict[str, Path]:
    """sha256 of the file -> path, for assets/samples/<class>_<k>.png in class order."""
    paths = sorted((ASSETS / "samples").glob("*.png"), key=lambda p: (_class_of(p), p.name))
    return {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in paths if _class_of(p) in CLASSES}


def _class_of(path: Path) -> str:
    return path.stem.rsplit("_", 1)[0]


SAMPLES = _samples()


def sample_of(image: str) -> Path | None:
    """The shipped test image with exactly these bytes, if any."""
    return SAMPLES.get(hashlib.sha256(Path(image).read_bytes()).hexdigest())


def known_label(image: str) -> int | None:
    """The true class index when the image is one of the shipped samples, else None."""
    sample = sample_of(image)
    return None if sample is None else CLASSES.index(_class_of(sample))


def truth(key: str, predicted: int) -> str:
    """The true class when the image (by its sha256 ``key``) is one of the shipped test images."""
    sample = SAMPLES.get(key)
    if sample is None:
        return "True class: unknown (your own image)."
    true = _class_of(sample)
    verdict = "correct" if CLASSES[predicted] == true else f"wrong (predicted {CLASSES[predicted]})"
    return f"True class: **{true}** (CIFAR-10 test image `{sample.name}`): the prediction is {verdict}."


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


def model_input(image: str | None, tell_user: bool = False) -> preprocess.ModelInput:
    img, notes = preprocess.load_image_with_notes(image)
    if tell_user:
        w, h = img.size
        if w != h:
            notes.append(f"The image is {w}x{h}; the network sees its centre {min(w, h)}x{min(w, h)} square, scaled to 32x32.")
        for note in notes:
            gr.Info(note)
    return preprocess.to_model_input(img)


def target_index(choice: str | None) -> int | None:
    if choice in (None, "", PREDICTED):
        return None
    if choice not in CLASSES:
        raise ValueError(f"Unknown target class {choice!r}; use one of {', '.join(TARGET_CHOICES)}.")
    return CLASSES.index(choice)


def enlarge(seen: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(seen).resize((DISPLAY, DISPLAY), Image.Resampling.NEAREST))


NO_IMAGE = "No image yet: pick one of the test images above or upload your own, then come back here."


def no_image() -> None:
    gr.Warning(NO_IMAGE, title="No image")


def webp_in_cache(image: np.ndarray) -> str:
    """An RGB uint8 image as a WebP file in Gradio's cache, named by its content as Gradio names
    them, for a gallery to serve as it is. Encoded here, at libwebp's fastest method, because
    Gradio encodes at its default (method 4): 3.5x the time for 15% fewer bytes, which on
    2 cores is 10 ms of every redraw of the Grad-CAM overlays."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="webp", quality=80, method=0)
    data = buffer.getvalue()
    folder = _GRADIO_CACHE / hashlib.sha256(data).hexdigest()
    path = folder / "overlay.webp"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{os.getpid()}-{threading.get_ident()}.tmp"  # whole or absent, for a concurrent reader
        tmp.write_bytes(data)
        tmp.replace(path)
    return str(path)


# Where Gradio keeps the files it serves; a file already there is served without a copy.
_GRADIO_CACHE = Path(get_upload_folder())


def pair_overlays(images: tuple[np.ndarray, np.ndarray], cams: tuple[np.ndarray, np.ndarray],
                   captions: tuple[str, str]) -> list[tuple[np.ndarray, str]]:
    """Two Grad-CAM overlays on one colour scale, so their strengths compare."""
    vmax = max(float(c.max()) for c in cams)
    return [(render.overlay(im, cam, vmax=vmax, size=DISPLAY), cap) for im, cam, cap in zip(images, cams, captions)]


def check_stage(stage: str) -> str:
    if stage not in STAGE_NAMES:
        raise ValueError(f"Unknown Grad-CAM layer {stage!r}; use one of {', '.join(STAGE_NAMES)}.")
    return stage
