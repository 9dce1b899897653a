"""Why residuals: the plain twin's training, gradient flow and the lesion study, each from a measurement.

He et al. (2015) claim that the residual mapping is easier to optimise than the unreferenced one,
and that the gradient flows easily through the additions. This tab shows both on our networks:
ResNet-50 and its plain twin trained alike (assets/plain_vs_residual.json, ``python -m train.twin``),
the loss gradient's norm through the 16 blocks for the image on screen (served model, and both
twins at initialisation: one backward each, live), and which residual branches the served model can
lose (Veit et al. 2016): the study on 2,000 test images (assets/lesions.json) and, live, this image.
"""

from __future__ import annotations

import threading
from typing import Any

import gradio as gr
import numpy as np
import plotly.graph_objects as go

from insight import residuals
from resnet import CLASSES
from resnet.files import AssetError, read_json

from ..context import (
    ASSETS,
    BLOCK_NAMES,
    CACHE,
    NO_IMAGE,
    PREDICTED,
    SERVING,
    TARGET_CHOICES,
    served_sha256,
    target_index,
    user_errors,
)
from ..plots import STAGE_COLOURS, page_layout
from ..ui import Ctx

SERVED = "served model"
FLOW_COLOURS = {SERVED: "#4C78A8", "ResNet-50 at initialisation": "#54A24B", "plain-50 at initialisation": "#E45756"}
TWIN_COLOURS = {"resnet50": "#54A24B", "plain50": "#E45756"}

_init_lock = threading.Lock()
_init_nets: dict[str, Any] = {}


def initial_networks() -> dict[str, Any]:
    """ResNet-50 and plain-50 at initialisation, built on the first gradient-flow request (~1 s), then kept."""
    with _init_lock:
        if not _init_nets:
            _init_nets.update(residuals.initial_networks())
        return _init_nets


# ----- the twins and the lesion study (assets) ----------------------------------------------------


def _twins() -> dict[str, Any] | None:
    try:
        return read_json(ASSETS / residuals.TWIN_FILE)
    except AssetError:
        return None


def twin_figure(asset: dict[str, Any]) -> go.Figure:
    """Training loss of both twins against the step, and their test accuracy after each epoch."""
    fig = go.Figure()
    budget = asset["budget"]
    steps_per_epoch = sum(budget["steps_per_resolution"].values()) / budget["epochs"]
    for arch, record in asset["twins"].items():
        colour = TWIN_COLOURS.get(arch, "#888")
        losses = record["losses"]
        fig.add_trace(go.Scatter(
            x=[r["step"] for r in losses], y=[r["loss"] for r in losses], mode="lines", name=f"{record['name']}: training loss",
            line=dict(color=colour), hovertemplate="step %{x}<br>loss %{y:.3f}<extra>" + record["name"] + "</extra>"))
        fig.add_trace(go.Scatter(
            x=[e["epoch"] * steps_per_epoch for e in record["epochs"]], y=[e["test_acc"] * 100 for e in record["epochs"]],
            mode="markers+lines", yaxis="y2", name=f"{record['name']}: test accuracy", marker=dict(size=9, color=colour),
            line=dict(dash="dot", color=colour),
            hovertemplate="after epoch %{text}<br>%{y:.1f}% of the test images<extra>" + record["name"] + "</extra>",
            text=[str(e["epoch"]) for e in record["epochs"]]))
    fig.update_layout(
        xaxis=dict(title="optimizer step (batch %d)" % asset["budget"]["batch_size"]),
        yaxis=dict(title="training loss (label-smoothed cross-entropy)", gridcolor="#eee"),
        yaxis2=dict(title="test accuracy (%)", overlaying="y", side="right", range=[0, 100]),
        legend=dict(orientation="h", y=-0.25), hovermode="closest",
    )
    return page_layout(fig, height=420, title="The same recipe, seed and data order: with and without shortcuts")


def twin_summary(asset: dict[str, Any]) -> str:
    budget = asset["budget"]
    res = ", ".join(f"{r} px: {n}" for r, n in budget["steps_per_resolution"].items())
    lines = [
        f"**Budget:** {budget['epochs']} epochs of {budget['images_per_epoch']:,} training images each "
        f"(steps per resolution {res}), batch {budget['batch_size']}, peak lr {budget['peak_lr']:.3g}: "
        f"{budget['recipe']}. Test accuracy on {asset['twins']['resnet50']['epochs'][-1]['test_images']:,} images of "
        f"the {asset['dataset']}. Made by `{asset['command']}`."
    ]
    for record in asset["twins"].values():
        final = record["epochs"][-1]
        lines.append(
            f"- **{record['name']}**: final training loss {final['train_loss']:.3f}, test accuracy "
            f"**{final['test_acc']:.1%}**; {record['training_seconds'] / 60:.1f} min on {record['device']} "
            f"in {record['precision']}."
        )
    a, b = (asset["twins"][k]["epochs"][-1] for k in ("resnet50", "plain50"))
    easier = "ResNet-50" if a["train_loss"] < b["train_loss"] else "plain-50"
    lines.append(f"On the same budget, **{easier}** reached the lower training loss "
                 f"({min(a['train_loss'], b['train_loss']):.3f} against {max(a['train_loss'], b['train_loss']):.3f}).")
    return "\n".join(lines)


def _lesions() -> tuple[dict[str, Any] | None, str]:
    """The served weights' lesion study, or why there is none for them."""
    try:
        study = read_json(ASSETS / residuals.LESIONS_FILE)
    except AssetError as exc:
        return None, f"**No lesion study for these weights.** {exc} `python -m train.lesions` makes it."
    made_for = study.get("weights_sha256")
    if made_for and made_for != served_sha256():
        return None, (f"**No lesion study for these weights.** The one in `{residuals.LESIONS_FILE}` was made for other "
                      f"weights (sha256 {made_for[:12]}); `python -m train.lesions --weights PATH` makes one for them.")
    return study, ""


def lesion_study_figure(study: dict[str, Any], twin: dict[str, Any] | None) -> go.Figure:
    """Accuracy lost with each block's branch removed, for the served model and the trained plain twin."""
    fig = go.Figure()

    def drops(s: dict[str, Any]) -> list[float | None]:
        return [None if s["single"].get(n) is None else (s["intact"] - s["single"][n]) * 100 for n in BLOCK_NAMES]

    colours = [STAGE_COLOURS.get(n.split(".")[0], "#888") for n in BLOCK_NAMES]
    fig.add_trace(go.Bar(x=BLOCK_NAMES, y=drops(study), name=f"{SERVED} (intact {study['intact']:.1%})",
                         marker=dict(color=colours), hovertemplate="without %{x}: %{y:.1f} points lost<extra></extra>"))
    if twin is not None:
        lesions = twin["lesions"]
        fig.add_trace(go.Scatter(
            x=BLOCK_NAMES, y=drops(lesions), mode="markers", name=f"trained plain-50 twin (intact {lesions['intact']:.1%})",
            marker=dict(symbol="x", size=11, color=TWIN_COLOURS["plain50"]),
            hovertemplate="plain-50 without %{x}: %{y:.1f} points lost<extra></extra>"))
    fig.update_layout(xaxis=dict(title="residual branch removed (block outputs ReLU(shortcut(x)))"),
                      yaxis=dict(title="top-1 accuracy lost (points)", gridcolor="#eee"),
                      legend=dict(orientation="h", y=-0.3))
    return page_layout(fig, height=380, title=f"Lesion study on {study['images']:,} test images: one branch at a time")


def pair_table(study: dict[str, Any], twin: dict[str, Any] | None) -> list[list[Any]]:
    rows = []
    for pair, acc in study["pairs"].items():
        a, b = pair.split("+")
        plain = None if twin is None else twin["lesions"]["pairs"].get(pair)
        rows.append([pair, _pct(study["single"][a]), _pct(study["single"][b]), _pct(acc),
                     "not possible" if twin is not None and plain is None else _pct(plain)])
    return rows


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.1f}%"


def plain_vs_residual() -> tuple:
    """The tab's measured assets: the twins' training, and the lesion study with the twin's beside it."""
    asset = _twins()
    if asset is None:
        twin_md = ("**The plain twin is not trained in this build** (`assets/plain_vs_residual.json` is missing): "
                   "`python -m train.twin --to assets` trains ResNet-50 and plain-50 alike and writes it. The gradient "
                   "flow and the lesions below need no twin.")
        twin_plot = None
    else:
        try:
            twin_md, twin_plot = twin_summary(asset), twin_figure(asset)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            asset, twin_md, twin_plot = None, f"**The twins' file is incomplete** ({exc!r}).", None
    study, why = _lesions()
    if study is None:
        return twin_md, twin_plot, why, None, [], None
    try:
        twin = None if asset is None else asset["twins"]["plain50"]
        text = residuals.describe_lesions(study)
        if twin is not None:
            text += " " + residuals.describe_lesions(twin["lesions"], "the trained plain-50 twin")
        numbers = {"served": study, "plain_twin": None if twin is None else twin["lesions"]}
        return twin_md, twin_plot, text, lesion_study_figure(study, twin), pair_table(study, twin), numbers
    except (KeyError, TypeError, ValueError) as exc:
        return twin_md, twin_plot, f"**The lesion study's file is incomplete** ({exc!r}).", None, [], None


# ----- this image: gradient flow and lesions (live, cached with the image's analysis) ------------


def flow_figure(points: list[str], flows: dict[str, np.ndarray], target: str) -> go.Figure:
    fig = go.Figure()
    for name, norms in flows.items():
        fig.add_trace(go.Scatter(x=points, y=[float(v) for v in norms], mode="lines+markers", name=name,
                                 line=dict(color=FLOW_COLOURS.get(name)),
                                 hovertemplate="%{x}: ||dL/dh|| = %{y:.3g}<extra>" + name + "</extra>"))
    fig.update_layout(yaxis=dict(type="log", title="||dL/dh|| (log scale)", gridcolor="#eee"),
                      xaxis=dict(title="where: the image, then the input of each block (backward runs right to left)"),
                      legend=dict(orientation="h", y=-0.3))
    return page_layout(fig, height=400, title=f"Loss gradient for class {target} on its way back through the blocks")


@user_errors
def gradient_flow(image: str | None, target: str | None) -> tuple:
    """||dL/dh|| at the image and at each block's input, for the served model and both twins at initialisation."""
    chosen = target_index(target)
    if image is None:
        raise ValueError(NO_IMAGE)
    entry = CACHE.entry(image)
    cls = entry.predicted if chosen is None else chosen

    def compute() -> dict[str, np.ndarray]:
        x = entry.input()
        flows = {SERVED: residuals.gradient_flow(SERVING, x, cls)}
        for name, net in initial_networks().items():
            flows[name] = residuals.gradient_flow(net, x.contiguous(), cls)
        return flows

    flows = CACHE.memo(entry, ("gradient_flow", cls), compute)
    points = residuals.flow_points(SERVING)
    text = f"For class **{CLASSES[cls]}**{' (the prediction)' if chosen is None else ''}: " + residuals.describe_flow(flows)
    numbers = {"class": CLASSES[cls], "points": points, "norms": {n: [float(v) for v in f] for n, f in flows.items()}}
    return flow_figure(points, flows, CLASSES[cls]), text, numbers


def lesion_figure(probs: np.ndarray, intact: int, selected: str) -> go.Figure:
    """Probability of the intact prediction with each block's branch removed; the bar says what it predicts then."""
    tops = probs[1:].argmax(1)
    colours = ["#4C78A8" if t == intact else "#E45756" for t in tops]
    fig = go.Figure(go.Bar(
        x=BLOCK_NAMES, y=probs[1:, intact] * 100, marker=dict(color=colours, line=dict(
            color=["black" if n == selected else c for n, c in zip(BLOCK_NAMES, colours)],
            width=[3 if n == selected else 0 for n in BLOCK_NAMES])),
        text=[CLASSES[t] if t != intact else "" for t in tops], textposition="outside",
        customdata=[[CLASSES[t], probs[k + 1, t] * 100] for k, t in enumerate(tops)],
        hovertemplate="without %{x}: " + CLASSES[intact] + " %{y:.1f}%<br>top-1 %{customdata[0]} "
                      "%{customdata[1]:.1f}%<extra></extra>"))
    fig.add_hline(y=float(probs[0, intact]) * 100, line=dict(dash="dot", color="grey"),
                  annotation_text=f"intact: {CLASSES[intact]} {probs[0, intact]:.1%}", annotation_position="top left")
    fig.update_layout(yaxis=dict(title=f"P({CLASSES[intact]}) (%)", range=[0, 110], gridcolor="#eee"),
                      xaxis=dict(title="residual branch removed (red: the prediction changes, to the class written)"))
    return page_layout(fig, height=360, title="This image with one residual branch removed at a time")


@user_errors
def lesion(image: str | None, block: str) -> tuple:
    """This image's top-1 and its probability with ``block``'s residual branch removed (and every other block's)."""
    if block not in BLOCK_NAMES:
        raise ValueError(f"Unknown block {block!r}; blocks are {BLOCK_NAMES[0]} .. {BLOCK_NAMES[-1]}.")
    if image is None:
        raise ValueError(NO_IMAGE)
    entry = CACHE.entry(image)
    probs = CACHE.memo(entry, ("lesions",), lambda: residuals.lesion_probabilities(SERVING, entry.input()))
    intact = int(probs[0].argmax())
    k = BLOCK_NAMES.index(block) + 1
    top = int(probs[k].argmax())
    changed = "the same class" if top == intact else f"**{CLASSES[top]}** instead"
    text = (f"Intact, the model predicts **{CLASSES[intact]}** ({probs[0, intact]:.1%}). Without the residual branch "
            f"of **{block}** it predicts {changed} ({probs[k, top]:.1%}; {CLASSES[intact]} {probs[k, intact]:.1%}). "
            f"{int((probs[1:].argmax(1) != intact).sum())} of 16 single removals change the prediction for this image.")
    numbers = {
        "intact": {"class": CLASSES[intact], "probability": float(probs[0, intact])},
        "block": block,
        "without_block": {"class": CLASSES[top], "probability": float(probs[k, top]),
                          "probability_of_intact_class": float(probs[k, intact])},
        "every_block": {n: {"class": CLASSES[int(probs[i + 1].argmax())], "probability": float(probs[i + 1].max())}
                        for i, n in enumerate(BLOCK_NAMES)},
    }
    return lesion_figure(probs, intact, block), text, numbers


def this_image(image: str | None, target: str | None, block: str) -> tuple:
    """Both live views for the image on screen; no image yet leaves them empty without a warning."""
    if image is None:
        return None, "", None, None, "", None
    return (*gradient_flow(image, target), *lesion(image, block))


def build(ctx: Ctx) -> None:
    with gr.Tab("Why residuals", id="residuals") as tab:
        gr.Markdown(
            "He et al. (2015) give two reasons for shortcuts: a residual mapping F(x) is **easier to optimise** than "
            "the unreferenced mapping a plain stack must learn, and the **gradient flows** through the additions. "
            "Each is measured here on our own networks. A third measurement surprises most people: how many residual "
            "branches the trained network can lose (Veit et al. 2016, *Residual networks behave like ensembles of "
            "relatively shallow networks*)."
        )
        gr.Markdown("### 1. Easier to optimise: ResNet-50 and its plain twin, trained alike")
        twin_md = gr.Markdown(elem_id="twin-summary")
        twin_plot = gr.Plot(label="Training loss and test accuracy of both twins", elem_id="twin-plot")
        gr.Markdown("### 2. Gradient flow, for the image on screen")
        target = gr.Dropdown(TARGET_CHOICES, value=PREDICTED, label="Loss of class", elem_id="flow-target")
        flow_md = gr.Markdown(elem_id="flow-text")
        flow_plot = gr.Plot(label="Gradient norm at the image and at each block's input", elem_id="flow-plot")
        with gr.Accordion("Gradient norms", open=False):
            flow_json = gr.JSON(label="numbers")
        gr.Markdown("### 3. Lesions: remove one residual branch (the block outputs ReLU(shortcut(x)) alone)")
        study_md = gr.Markdown(elem_id="lesion-study-text")
        study_plot = gr.Plot(label="Accuracy lost per removed branch", elem_id="lesion-study-plot")
        with gr.Accordion("Adjacent pairs removed together", open=False):
            pairs = gr.Dataframe(headers=["pair removed", "first alone", "second alone", "both", "plain-50 twin, both"],
                                 interactive=False, elem_id="lesion-pairs")
        with gr.Accordion("Lesion study numbers", open=False):
            study_json = gr.JSON(label="numbers")
        block = gr.Dropdown(BLOCK_NAMES, value=BLOCK_NAMES[0], label="For this image, remove the branch of",
                            elem_id="lesion-block")
        lesion_md = gr.Markdown(elem_id="lesion-text")
        lesion_plot = gr.Plot(label="This image without each branch", elem_id="lesion-plot")
        with gr.Accordion("This image's lesions", open=False):
            lesion_json = gr.JSON(label="numbers")
    live = [flow_plot, flow_md, flow_json, lesion_plot, lesion_md, lesion_json]
    # Drawn when opened, never at start-up or for a hidden tab.
    tab.select(plain_vs_residual, outputs=[twin_md, twin_plot, study_md, study_plot, pairs, study_json],
               api_name="plain_vs_residual")
    tab.select(this_image, inputs=[ctx.image, target, block], outputs=live, api_name="residuals_this_image",
               api_visibility="private")
    target.change(gradient_flow, inputs=[ctx.image, target], outputs=[flow_plot, flow_md, flow_json],
                  api_name="gradient_flow")
    block.change(lesion, inputs=[ctx.image, block], outputs=[lesion_plot, lesion_md, lesion_json], api_name="lesion")
    ctx.follow("residuals", this_image, inputs=[target, block], outputs=live)
