"""How it learned: replay the training of the served model, snapshot by snapshot.

Reads ``assets/replay.npz`` (``insight.replay``) the first time the tab opens.
For one probe image it draws the probability of every class over training, the
four Grad-CAM maps for the predicted and the true class and the 16 block ratios
at the chosen snapshot; for the whole model the per-class test accuracy over
epochs, the confusion matrix at the chosen epoch and the mean |gamma| of every
block over training. Every figure is drawn from ``Replay.view``, the same
numbers ``/training_replay`` returns. Nothing is computed with the model.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.colors import qualitative

from insight.replay import BLOCK_NAMES, REPLAY_FILE, Replay, ReplayError, load_replay
from resnet import CLASSES, STAGE_NAMES

from ..context import ASSETS, CARD, NOT_OURS, pair_overlays, sample_of, user_errors
from ..plots import MARGIN, STAGE_COLOURS, page_layout
from ..ui import Ctx
from .blocks import ratio_bar
from .testset import confusion_matrix_figure

TAB_ID = "replay"
PLAY, PAUSE = "▶ Play", "⏸ Pause"
FRAME_SECONDS = 1.0  # one snapshot per second while playing
CLASS_COLOURS = dict(zip(CLASSES, qualitative.Plotly))
NOT_AVAILABLE = "**How it learned is not available.**"


# ----- the replay file, read once (again only when it is replaced) --------------------------


@functools.lru_cache(maxsize=1)
def _read(path: Path, mtime_ns: int, size: int) -> Replay:
    return load_replay(path)


def current_replay() -> Replay:
    """The validated replay of the served weights; ``ReplayError`` (a sentence) when there is none."""
    if NOT_OURS:
        raise ReplayError(f"{NOT_OURS}, so there is no recording of their training to replay.", missing=True)
    path = ASSETS / REPLAY_FILE
    try:
        stat = path.stat()
    except OSError:
        return load_replay(path)  # raises the "not available" sentence
    return _read(path, stat.st_mtime_ns, stat.st_size)


def _dataset() -> str:
    return str(CARD.get("dataset") or "the test set")


def replay_data(sample: str, snapshot: float) -> dict[str, Any]:
    """What the tab shows for one probe image at one snapshot, as plain data (the API's answer)."""
    view = current_replay().view(sample, snapshot)
    if view["evaluation"] is not None:
        view["evaluation"]["dataset"] = _dataset()
    view["over_epochs"]["dataset"] = _dataset()
    return view


# ----- figures: plain data in, plotly out ----------------------------------------------------


def _short(view: dict[str, Any], i: int) -> str:
    step, epoch = view["over_training"]["step"][i], view["over_training"]["epoch"][i]
    if step == 0:
        return "init"
    return f"{round(epoch)}" if epoch >= 1 and abs(epoch - round(epoch)) < 1e-6 else f"{epoch:.2f}"


def _time_axis(fig: go.Figure, view: dict[str, Any]) -> None:
    """Snapshots evenly spaced, labelled with their epoch, and the chosen one marked."""
    n = len(view["over_training"]["step"])
    every = max(1, math.ceil(n / 14))
    ticks = list(range(0, n, every))
    fig.update_xaxes(tickvals=ticks, ticktext=[_short(view, i) for i in ticks], range=[-0.5, n - 0.5], gridcolor="#eee",
                     title_text="epoch at each snapshot (evenly spaced; the first epoch is sampled log-spaced)")
    fig.add_vline(x=view["snapshot"]["index"], line=dict(color="black", dash="dot", width=1.5))


def probability_figure(view: dict[str, Any]) -> go.Figure:
    """P(class) for one probe over all snapshots; the true class drawn bold."""
    over = view["over_training"]
    x = list(range(len(over["step"])))
    true = view["true_class"]
    fig = go.Figure()
    for name in CLASSES:
        bold = name == true
        fig.add_trace(go.Scatter(
            x=x, y=over["probs"][name], name=f"{name} (true class)" if bold else name,
            mode="lines+markers" if bold else "lines", opacity=1.0 if bold else 0.6,
            line=dict(color=CLASS_COLOURS[name], width=4 if bold else 1.5),
            customdata=over["labels"], hovertemplate=f"%{{customdata}}<br>P({name}) = %{{y:.1%}}<extra></extra>",
        ))
    _time_axis(fig, view)
    fig.update_yaxes(title_text="probability", range=[0, 1.02], tickformat=".0%", gridcolor="#eee")
    fig.update_layout(legend=dict(orientation="h", y=-0.3), hovermode="closest")
    return page_layout(fig, height=380, title=f"P(class) for {view['sample']} over training")


def ratio_figure(view: dict[str, Any]) -> go.Figure:
    """||F(x)|| / ||x|| of the 16 blocks at the chosen snapshot, on one axis for the whole replay."""
    fig = ratio_bar(BLOCK_NAMES, np.array(list(view["block_ratios"].values())))
    top = max((max(v) for v in view["over_training"]["block_ratios"].values()), default=1.0)
    fig.update_yaxes(range=[0, max(1.1, top * 1.05)])
    fig.update_xaxes(title_text="bottleneck block")
    return page_layout(fig, height=320, title="||F(x)|| / ||x|| of each block, at this snapshot")


def accuracy_figure(view: dict[str, Any]) -> go.Figure:
    """Per-class test accuracy after each evaluated epoch; the overall accuracy dashed; the chosen epoch marked."""
    over = view["over_epochs"]
    fig = go.Figure()
    if not over["epoch"]:
        return _empty("No test evaluation was recorded during this run.", height=360)
    for name in CLASSES:
        fig.add_trace(go.Scatter(
            x=over["epoch"], y=over["per_class_accuracy"][name], name=name, mode="lines+markers",
            line=dict(color=CLASS_COLOURS[name], width=1.5), marker=dict(size=4),
            hovertemplate=f"epoch %{{x}}<br>{name}: %{{y:.1%}}<extra></extra>",
        ))
    fig.add_trace(go.Scatter(x=over["epoch"], y=over["accuracy"], name="all classes", mode="lines",
                             line=dict(color="black", width=3, dash="dash"),
                             hovertemplate="epoch %{x}<br>all classes: %{y:.1%}<extra></extra>"))
    fig.add_vline(x=max(view["snapshot"]["epoch"], 0), line=dict(color="black", dash="dot", width=1.5))
    fig.update_xaxes(title_text="epoch", gridcolor="#eee", range=[0, max(over["epoch"]) + 0.5], dtick=max(1, math.ceil(max(over["epoch"]) / 10)))
    fig.update_yaxes(title_text="test accuracy", range=[0, 1.02], tickformat=".0%", gridcolor="#eee")
    fig.update_layout(legend=dict(orientation="h", y=-0.3), hovermode="closest")
    return page_layout(fig, height=380, title=f"Test accuracy per class after each epoch<br><sup>{over['dataset']}</sup>")


def confusion_figure(view: dict[str, Any]) -> go.Figure:
    """The confusion matrix of the latest evaluation at or before the chosen snapshot."""
    ev = view["evaluation"]
    if ev is None:
        return _empty("No evaluation yet at this snapshot: the first one comes at the end of an epoch. "
                      "Move the slider further.", height=420)
    fig = confusion_matrix_figure({"confusion_matrix": ev["confusion_matrix"]})
    fig.update_layout(height=440, title=f"Confusion matrix after epoch {ev['epoch']}: {ev['accuracy']:.1%} right"
                                        f"<br><sup>{ev['images']:,} test images, {ev['dataset']}</sup>")
    return fig


def gamma_figure(view: dict[str, Any]) -> go.Figure:
    """Mean |gamma| of each block's last BatchNorm over training: 0 at the start, where every block is the identity."""
    over = view["over_training"]
    x = list(range(len(over["step"])))
    fig = go.Figure()
    for block in BLOCK_NAMES:
        stage, index = block.split(".")
        fig.add_trace(go.Scatter(
            x=x, y=over["bn3_gamma"][block], name=stage, mode="lines", legendgroup=stage, showlegend=index == "0",
            line=dict(color=STAGE_COLOURS[stage], width=1.5), customdata=over["labels"],
            hovertemplate=f"block {block}<br>%{{customdata}}<br>mean |gamma| = %{{y:.4f}}<extra></extra>",
        ))
    _time_axis(fig, view)
    fig.update_yaxes(title_text="mean |gamma| of bn3", rangemode="tozero", gridcolor="#eee")
    fig.update_layout(legend=dict(orientation="h", y=-0.3), hovermode="closest")
    return page_layout(fig, height=380, title="Mean |gamma| of each block's last BatchNorm<br>"
                                              "<sup>0 at the start: every block begins as the identity</sup>")


def _empty(text: str, height: int) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font=dict(size=13))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(margin=MARGIN)
    return page_layout(fig, height=height)


def _probe_image(name: str) -> np.ndarray:
    """The probe as the model saw it: the shipped sample of that name (grey if it is not shipped)."""
    path = ASSETS / "samples" / name
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB").resize((32, 32)), dtype=np.uint8)
    except OSError:
        return np.full((32, 32, 3), 128, np.uint8)


def cam_gallery(view: dict[str, Any]) -> list[tuple[np.ndarray, str]]:
    """Eight overlays: the predicted class's four maps, then the true class's; each stage's pair on one scale."""
    image = _probe_image(view["sample"])
    pred, true = view["predicted_class"], view["true_class"]
    pairs = [
        pair_overlays(
            (image, image),
            (np.asarray(view["cams"]["pred"][stage], np.float32), np.asarray(view["cams"]["true"][stage], np.float32)),
            (f"{stage} · {pred}", f"{stage} · true {true}"),
        )
        for stage in STAGE_NAMES
    ]
    return [p[0] for p in pairs] + [p[1] for p in pairs]


def when_text(view: dict[str, Any]) -> str:
    snap = view["snapshot"]
    pred, true = view["predicted_class"], view["true_class"]
    verdict = "right" if pred == true else f"wrong: the true class is **{true}**, at {view['probs'][true]:.1%}"
    return (
        f"**Snapshot {snap['index'] + 1} of {snap['count']}: {snap['label']}.** For `{view['sample']}` the model "
        f"predicts **{pred}** ({view['probs'][pred]:.1%}), {verdict}."
    )


N_VIEW = 7  # when, probabilities, cams, ratios, accuracy, confusion, gamma


def draw(sample: str, snapshot: int) -> tuple:
    view = replay_data(sample, snapshot)
    return (when_text(view), probability_figure(view), cam_gallery(view), ratio_figure(view),
            accuracy_figure(view), confusion_figure(view), gamma_figure(view))


# ----- handlers ----------------------------------------------------------------------------


def _choose(replay: Replay, image: str | None, sample: str | None) -> tuple[str, str]:
    """The probe to show and the sentence about the current image."""
    keep = sample if sample in replay.probe_names else replay.probe_names[0]
    n = len(replay.probe_names)
    if image is None:
        return keep, (f"No image chosen, so this shows the probe `{keep}`: the replay follows the {n} CIFAR-10 test "
                      "images above, recorded at every snapshot of training. Pick one above or in the list below.")
    try:
        found = sample_of(image)
    except OSError:
        found = None
    if found is not None and found.name in replay.probe_names:
        return found.name, ""
    return keep, (f"Your image is not one of the {n} probe images recorded during training, so there is no record of "
                  f"how the model saw it while it learned. Showing `{keep}` instead: pick any of the {n} test images "
                  "above, or one in the list below.")


def _unavailable(exc: Exception) -> tuple:
    return (f"{NOT_AVAILABLE} {exc}", gr.Dropdown(choices=[], value=None), gr.skip(), "", *([None] * (N_VIEW - 1)))


@user_errors
def open_replay(image: str | None, sample: str | None, snapshot: float, loaded: bool) -> tuple:
    """The tab comes on screen: read the replay (first time), follow the current image, draw."""
    try:
        replay = current_replay()
    except ReplayError as exc:
        return (*_unavailable(exc), False)
    chosen, note = _choose(replay, image, sample)
    last = len(replay) - 1
    index = min(int(snapshot or 0), last) if loaded else last  # first opening: the model as it is served
    slider = gr.Slider(minimum=0, maximum=max(last, 1), value=index, step=1, interactive=last > 0)
    return (note, gr.Dropdown(choices=list(replay.probe_names), value=chosen), slider, *draw(chosen, index), True)


@user_errors
def replay_view(sample: str | None, snapshot: float) -> tuple:
    """The user picked another probe or moved the slider."""
    try:
        replay = current_replay()
    except ReplayError as exc:
        return (f"{NOT_AVAILABLE} {exc}", *([None] * (N_VIEW - 1)))
    chosen = sample if sample in replay.probe_names else replay.probe_names[0]
    return draw(chosen, min(int(snapshot or 0), len(replay) - 1))


def replay_follow(image: str | None, sample: str | None, snapshot: float, loaded: bool) -> tuple:
    """A new image while the tab is on screen: show its replay if it is a probe, else say why not."""
    if not loaded:
        return (gr.skip(),) * (3 + N_VIEW)
    try:
        replay = current_replay()
    except ReplayError:
        return (gr.skip(),) * (3 + N_VIEW)
    chosen, note = _choose(replay, image, sample)
    index = min(int(snapshot or 0), len(replay) - 1)
    return (note, gr.Dropdown(value=chosen), gr.skip(), *draw(chosen, index))


def toggle_play(playing: bool, sample: str | None, snapshot: float) -> tuple:
    """Play from the chosen snapshot (from the start when at the end); Pause stops where it is."""
    if playing:
        return gr.Timer(active=False), gr.Button(value=PLAY), False, gr.skip(), *((gr.skip(),) * N_VIEW)
    try:
        last = len(current_replay()) - 1
    except ReplayError as exc:
        gr.Warning(str(exc), title="No replay")
        return gr.skip(), gr.skip(), False, gr.skip(), *((gr.skip(),) * N_VIEW)
    if last < 1:
        return gr.skip(), gr.skip(), False, gr.skip(), *((gr.skip(),) * N_VIEW)
    start = 0 if int(snapshot or 0) >= last else int(snapshot or 0)
    drawn = replay_view(sample, start) if start != int(snapshot or 0) else (gr.skip(),) * N_VIEW
    return gr.Timer(active=True), gr.Button(value=PAUSE), True, start, *drawn


# Read in the browser at every tick: is the replay's slider on screen? The open-tab State can lag
# behind the tab bar (Gradio sends a select for the first tab when the bar lays itself out), and
# a replay playing on a hidden tab would redraw for nobody.
ON_SCREEN_JS = """(sample, snapshot, on_screen) => {
    const slider = document.querySelector('#replay-slider');
    return [sample, snapshot, !!slider && slider.offsetParent !== null];
}"""


def advance(sample: str | None, snapshot: float, on_screen: bool) -> tuple:
    """One timer tick: the next snapshot; stops at the last one or when the tab leaves the screen."""
    stop = (gr.Timer(active=False), gr.Button(value=PLAY), False)
    try:
        last = len(current_replay()) - 1
    except ReplayError:
        return (gr.skip(), *stop, *((gr.skip(),) * N_VIEW))
    if not on_screen:
        return (gr.skip(), *stop, *((gr.skip(),) * N_VIEW))
    index = min(int(snapshot or 0) + 1, last)
    # Only Play/Pause and the end set ``playing``: a tick still on its way when Pause is
    # pressed must not mark the replay as playing again.
    keep = (gr.skip(), gr.skip(), gr.skip()) if index < last else stop
    return (index, *keep, *replay_view(sample, index))


@user_errors
def training_replay(sample: str, snapshot: float) -> dict[str, Any]:
    """One probe image at one snapshot: probabilities, Grad-CAMs, block ratios, the whole model's numbers."""
    if sample is None or snapshot is None:
        raise ValueError("Give a probe image's file name (such as cat_0.png) and a snapshot index.")
    return replay_data(str(sample), snapshot)


def build(ctx: Ctx) -> None:
    with gr.Tab("How it learned", id=TAB_ID) as tab:
        gr.Markdown(
            "Replay the training of this very model. At every snapshot (the initialisation, a few steps of the first "
            "epoch, then the end of every epoch) training recorded what the model made of 30 fixed test images: "
            "each class's probability, where it looked (Grad-CAM at all four stages, for the class it predicted "
            "and for the true class) and how much every residual block changed its input; and, for the whole "
            "model, the test accuracy per class and how large each block's last BatchNorm scale had grown. Drag "
            "the slider or press Play."
        )
        note = gr.Markdown(elem_id="replay-note")
        sample = gr.Dropdown([], value=None, label="Probe image (one of the 30 test images recorded in training)",
                             elem_id="replay-sample")
        with gr.Row(equal_height=False):
            slider = gr.Slider(0, 1, value=0, step=1, label="Snapshot of training (drag, or press Play)",
                               elem_id="replay-slider", scale=6)
            play = gr.Button(PLAY, elem_id="replay-play", scale=1, min_width=110)
        when = gr.Markdown(elem_id="replay-when")
        with gr.Row(equal_height=False):
            with gr.Column():
                gr.Markdown("### This image")
                probs = gr.Plot(label="Class probabilities over training", elem_id="replay-probs")
                # A one-line label: the gallery's label floats over its first row.
                cams = gr.Gallery(label="Grad-CAM: predicted class (top), true class (bottom)", columns=4, rows=2,
                                  height="auto", object_fit="contain", format="png", allow_preview=False,
                                  elem_id="replay-cams")
                gr.Markdown("Each layer's two maps share one colour scale (blue 0, red the larger maximum).")
                ratios = gr.Plot(label="||F(x)|| / ||x|| per block at this snapshot", elem_id="replay-ratios")
            with gr.Column():
                gr.Markdown("### The whole model")
                accuracy = gr.Plot(label="Per-class test accuracy over epochs", elem_id="replay-accuracy")
                confusion = gr.Plot(label="Confusion matrix at this epoch", elem_id="replay-confusion")
                gamma = gr.Plot(label="Mean |gamma| of each block's last BatchNorm", elem_id="replay-gamma")
        loaded = gr.State(False)
        playing = gr.State(False)
        timer = gr.Timer(FRAME_SECONDS, active=False)
        on_screen = gr.Checkbox(False, visible=False)  # set in the browser by ON_SCREEN_JS
        # The endpoint takes plain values, so a client needs no open tab (the dropdown's choices load with it).
        api_sample = gr.Textbox(visible=False)
        api_snapshot = gr.Number(visible=False)
        api_answer = gr.JSON(visible=False)
        api_button = gr.Button(visible=False)
    view_outputs = [when, probs, cams, ratios, accuracy, confusion, gamma]
    tab.select(open_replay, inputs=[ctx.image, sample, slider, loaded],
               outputs=[note, sample, slider, *view_outputs, loaded], api_name="replay_open",
               api_visibility="private")
    # .input, not .change: only the user's moves redraw here; the handlers that set the slider or the
    # probe themselves (opening, Play, a new image) draw in the same step, so nothing is drawn twice.
    gr.on([sample.input, slider.input], replay_view, inputs=[sample, slider], outputs=view_outputs,
          trigger_mode="always_last", api_name="replay_view", api_visibility="private")
    play.click(toggle_play, inputs=[playing, sample, slider], outputs=[timer, play, playing, slider, *view_outputs],
               api_name="replay_play", api_visibility="private")
    timer.tick(advance, inputs=[sample, slider, on_screen], outputs=[slider, timer, play, playing, *view_outputs],
               js=ON_SCREEN_JS, api_name="replay_tick", api_visibility="private", show_progress="hidden")
    api_button.click(training_replay, inputs=[api_sample, api_snapshot], outputs=[api_answer], api_name="training_replay")
    ctx.follow(TAB_ID, replay_follow, inputs=[sample, slider, loaded], outputs=[note, sample, slider, *view_outputs])
