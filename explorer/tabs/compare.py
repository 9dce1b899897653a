"""Compare: the same image through the app's model and a checkpoint the user uploads, side by side.

The upload is any checkpoint ``resnet.weights.load_checkpoint`` reads (a refused
one leaves the previous upload in place). Each browser session holds at most
one uploaded model, in memory only: it lives in the session's ``gr.State`` and
in ``_LIVE`` (which caps how many the server holds and frees a session's model
the moment its page closes). Nothing is written by this tab; Gradio keeps the
uploaded file in its temporary folder, and the file is deleted there when it is
refused or replaced, or when the session ends.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
import plotly.graph_objects as go

from insight import anatomy, gradcam, render
from resnet import CLASSES, STAGE_NAMES
from resnet.weights import MAX_CHECKPOINT_BYTES, Checkpoint, WeightsError, load_checkpoint

from ..context import (
    DISPLAY,
    MODEL,
    PREDICTED,
    TARGET_CHOICES,
    TOP_K,
    USER_WEIGHTS,
    model_input,
    target_index,
    user_errors,
)
from ..plots import page_layout
from ..ui import Ctx

APP_MODEL = "shipped model" if USER_WEIGHTS is None else f"app's model ({USER_WEIGHTS.name})"
FILE_TYPES = [".safetensors", ".pt", ".pth", ".ckpt", ".bin"]
MAX_LIVE = 8  # uploaded models the server holds at once (~94 MB each in float32)
SESSION_SECONDS = 3600  # an idle session's model is dropped after this long without a comparison
COLOURS = ("#4C78A8", "#F58518")  # app's model, uploaded model
NO_WEIGHTS = "Upload a ResNet-50 checkpoint above to compare it with the " + APP_MODEL + "."


@dataclass
class Second:
    """One session's uploaded model and the file Gradio stored it in."""

    checkpoint: Checkpoint | None = field(repr=False)
    upload: Path
    session: str

    def release(self) -> None:
        self.checkpoint = None
        with _LOCK:
            # Gradio names an upload by its content, so another session may hold the very same file.
            shared = any(other.upload == self.upload for other in _LIVE.values())
        if not shared:
            _remove_upload(self.upload)


_LIVE: dict[str, Second] = {}  # session hash -> its uploaded model
_LOCK = threading.Lock()


def _remove_upload(path: Path) -> None:
    """Delete an uploaded file, and its folder once empty, but only inside Gradio's upload folder."""
    folder = Path(gr.utils.get_upload_folder()).resolve()
    path = path.resolve()
    if folder not in path.parents:
        return
    path.unlink(missing_ok=True)
    if path.parent != folder and not any(path.parent.iterdir()):
        path.parent.rmdir()


def _load(path: str, session: str) -> Second:
    """Load an upload into a new Second for this session; a refused file leaves the old one in place."""
    with _LOCK:
        if session not in _LIVE and len(_LIVE) >= MAX_LIVE:
            raise gr.Error(f"The server already holds {MAX_LIVE} uploaded models; please try again in a few minutes.",
                           title="Server busy")
    try:
        checkpoint = load_checkpoint(path)
    except WeightsError as exc:
        _remove_upload(Path(path))
        raise gr.Error(str(exc), title="These weights cannot be used") from None
    # Grad-CAM needs gradients of activations only, never of a weight.
    checkpoint.model.requires_grad_(False)
    second = Second(checkpoint, Path(path), session)
    with _LOCK:
        old = _LIVE.pop(session, None)
        _LIVE[session] = second
    if old is not None:
        old.release()
    return second


def _forget(second: Second | None) -> None:
    """gr.State's delete_callback: the session expired or closed."""
    if second is None:
        return
    with _LOCK:
        if _LIVE.get(second.session) is second:
            del _LIVE[second.session]
    second.release()


def on_unload(request: gr.Request) -> None:
    """The page closed: free its uploaded model and file now, not when the state expires."""
    with _LOCK:
        second = _LIVE.pop(request.session_hash, None)
    if second is not None:
        second.release()


def _overlays(seen: np.ndarray, cams: dict[str, np.ndarray]) -> list[tuple[np.ndarray, str]]:
    # Each map on its own scale: Grad-CAM values of two networks share no unit.
    return [
        (render.overlay(seen, cams[s], vmax=float(cams[s].max()), size=DISPLAY),
         f"{s} · {cams[s].shape[0]}x{cams[s].shape[1]} · max {float(cams[s].max()):.2g}")
        for s in STAGE_NAMES
    ]


def ratios_figure(names: list[str], ratios: dict[str, np.ndarray]) -> go.Figure:
    """||F(x)|| / ||x|| of every block, one bar per model side by side."""
    fig = go.Figure([
        go.Bar(x=names, y=[float(r) for r in values], name=label, marker_color=colour,
               hovertemplate=f"{label}<br>block %{{x}}<br>||F(x)|| / ||x|| = %{{y:.3f}}<extra></extra>")
        for (label, values), colour in zip(ratios.items(), COLOURS)
    ])
    fig.add_hline(y=1.0, line=dict(dash="dot", color="grey"), annotation_text="F(x) as large as x",
                  annotation_position="top left")
    fig.update_layout(barmode="group", legend=dict(orientation="h", y=1.12, x=1, xanchor="right"))
    fig.update_yaxes(title_text="||F(x)|| / ||x||", rangemode="tozero", gridcolor="#eee")
    fig.update_xaxes(title_text="bottleneck block")
    return page_layout(fig, height=340, title="How much each block changes its input, for this image")


def _blank(second: Second | None, note: str) -> tuple:
    return second, note, None, None, [], [], None, None


def _verdict(p_app: int, p_yours: int) -> str:
    if p_app == p_yours:
        return f"Both predict **{CLASSES[p_app]}**."
    return f"They disagree: the {APP_MODEL} predicts **{CLASSES[p_app]}**, yours **{CLASSES[p_yours]}**."


@user_errors
def _compare(image: str | None, target: str | None, second: Second | None) -> tuple:
    t = target_index(target)
    if second is None or second.checkpoint is None:
        return _blank(None, NO_WEIGHTS)
    theirs = second.checkpoint
    if image is None:
        return _blank(second, f"Loaded {theirs.describe()}. Pick or upload an image above to compare.")
    x = model_input(image)
    ours = gradcam.analyze(MODEL, x.tensor, t)
    # Both models explain the same class: the one asked for, else the one the app's model predicts.
    yours = gradcam.analyze(theirs.model, x.tensor, ours.target)
    names = list(MODEL.blocks())
    ratios = {
        APP_MODEL: anatomy.residual_anatomy(MODEL, x.tensor).ratios,
        "your weights": anatomy.residual_anatomy(theirs.model, x.tensor).ratios,
    }
    why = "the class you chose" if t is not None else f"the class the {APP_MODEL} predicts"
    note = (
        f"Your weights: {theirs.describe()}. {_verdict(ours.predicted, yours.predicted)} Both Grad-CAMs explain "
        f"**{CLASSES[ours.target]}** ({why}); each map is coloured up to its own maximum, because Grad-CAM values "
        "of two networks share no unit. Both models get the same 32x32 input, normalised with this project's "
        "CIFAR-10 mean and std: weights trained with another normalisation look worse here than they are."
    )
    raw = {
        "target": CLASSES[ours.target],
        "models": {
            label: {"predicted": CLASSES[a.predicted], "top5": a.top_k(TOP_K),
                    "ratios": dict(zip(names, (round(float(r), 6) for r in ratios[label])))}
            for label, a in ((APP_MODEL, ours), ("your weights", yours))
        },
    }
    return (
        second, note, ours.top_k(TOP_K), yours.top_k(TOP_K),
        _overlays(x.seen, ours.cams), _overlays(x.seen, yours.cams), ratios_figure(names, ratios), raw,
    )


@user_errors
def compare(image: str | None, weights: str | None, target: str | None, second: Second | None,
            request: gr.Request) -> tuple:
    """The image through the app's model and the uploaded weights: top-5, Grad-CAM at every stage, block ratios.

    ``weights`` replaces the session's uploaded model when it is a new file.
    """
    target_index(target)  # a bad argument is refused before a checkpoint is read
    if weights is not None and (second is None or second.checkpoint is None or str(second.upload) != str(weights)):
        second = _load(weights, request.session_hash)
    return _compare(image, target, second)


def compare_loaded(image: str | None, target: str | None, second: Second | None) -> tuple:
    """The same comparison with the model already uploaded in this session."""
    return _compare(image, target, second)


def clear(second: Second | None) -> tuple:
    """The user removed the uploaded file: free the model now."""
    _forget(second)
    return _blank(None, NO_WEIGHTS)


def build(ctx: Ctx) -> None:
    with gr.Tab("Compare", id="compare") as tab:
        gr.Markdown(
            "Explore your own ResNet-50: upload a checkpoint of a ResNet-50 trained on CIFAR-10 with torchvision's "
            "module names (safetensors, or a `torch.save` state dict, possibly under `state_dict`/`model` and "
            "with `module.`, `_orig_mod.` or `model.` prefixes; CIFAR or ImageNet stem; float16, bfloat16 or "
            f"float32; at most {MAX_CHECKPOINT_BYTES // 2**20} MB). Pickles that need code are refused, never run. "
            "The image above then goes through both models side by side. Your model stays in memory for this "
            "browser session only, and the uploaded file is deleted when the session ends."
        )
        with gr.Row(equal_height=False):
            weights = gr.File(label="Your checkpoint", file_types=FILE_TYPES, type="filepath", height=120,
                              elem_id="compare-weights", scale=2)
            target = gr.Dropdown(TARGET_CHOICES, value=PREDICTED,
                                 label=f"Explain class (both models; default: what the {APP_MODEL} predicts)",
                                 scale=1)
        note = gr.Markdown(NO_WEIGHTS, elem_id="compare-note")
        with gr.Row(equal_height=False):
            with gr.Column(elem_id="compare-app"):
                app_top = gr.Label(num_top_classes=TOP_K, label=f"Top 5: {APP_MODEL}", elem_id="compare-app-top5")
                app_cams = gr.Gallery(label=f"Grad-CAM layer1..layer4: {APP_MODEL}", columns=2, object_fit="contain",
                                      format="png", allow_preview=False, elem_id="compare-app-cams")
            with gr.Column(elem_id="compare-yours"):
                your_top = gr.Label(num_top_classes=TOP_K, label="Top 5: your weights", elem_id="compare-yours-top5")
                your_cams = gr.Gallery(label="Grad-CAM layer1..layer4: your weights", columns=2, object_fit="contain",
                                       format="png", allow_preview=False, elem_id="compare-yours-cams")
        ratios = gr.Plot(label="||F(x)|| / ||x|| per block, both models", elem_id="compare-ratios")
        with gr.Accordion("Raw numbers", open=False):
            raw = gr.JSON(label="both models", elem_id="compare-raw")
        second = gr.State(None, time_to_live=SESSION_SECONDS, delete_callback=_forget)
    outputs = [second, note, app_top, your_top, app_cams, your_cams, ratios, raw]
    # One checkpoint loads at a time on the server: a 200 MB file briefly takes twice its size in memory.
    weights.upload(compare, inputs=[ctx.image, weights, target, second], outputs=outputs, api_name="compare",
                   concurrency_limit=1, concurrency_id="compare")
    weights.clear(clear, inputs=[second], outputs=outputs, api_name="compare_clear", api_visibility="private")
    gr.on([tab.select, target.change], compare_loaded, inputs=[ctx.image, target, second], outputs=outputs,
          api_name="compare_loaded", api_visibility="private")
    ctx.follow("compare", compare_loaded, inputs=[target, second], outputs=outputs)
