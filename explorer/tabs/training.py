"""Training curves: loss, accuracy and learning rate of the very weights being explained."""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from resnet.files import AssetError, read_json

from ..context import ASSETS, NOT_OURS
from ..plots import page_layout
from ..ui import Ctx

HISTORY_FILE = "history.json"


# The seed notebook this project answers: a Keras ResNet-50 on CIFAR-10 that
# reached this test accuracy after 50 epochs without data augmentation.
SEED_NOTEBOOK_ACCURACY = 0.756


SEED_NOTEBOOK_LABEL = "seed notebook: Keras ResNet-50, 50 epochs, no augmentation (75.6%)"


def run_starts(epochs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first epoch row of every run (a history continued by warm restarts names each row's run)."""
    starts, last = [], None
    for row in epochs:
        run = row.get("run", 1)
        if run != last:
            starts.append(row)
            last = run
    return starts


def training_figure(history: dict[str, Any]) -> go.Figure:
    """Loss and accuracy per epoch; learning rate on a second axis; references marked."""
    epochs = history.get("epochs") or []
    if not epochs:
        raise ValueError("history.json has no epochs")
    ep = [e["epoch"] for e in epochs]

    def col(key: str, scale: float = 1.0) -> list[float | None]:
        return [None if e.get(key) is None else float(e[key]) * scale for e in epochs]

    secs = col("epoch_seconds")
    ips = col("images_per_second")
    res = [e.get("resolution", "") for e in epochs]
    custom = np.array(
        [[s if s is not None else float("nan"), i if i is not None else float("nan"), r] for s, i, r in zip(secs, ips, res)],
        dtype=object,
    )
    hover_extra = "<br>epoch time %{customdata[0]:.1f} s (%{customdata[1]:,.0f} img/s)<br>resolution %{customdata[2]}"

    fig = make_subplots(
        rows=1,
        cols=2,
        specs=[[{"secondary_y": True}, {"secondary_y": False}]],
        subplot_titles=("Loss (learning rate on the right axis)", "Accuracy (%)"),
        horizontal_spacing=0.12,
    )
    for key, name, dash in (("train_loss", "train loss", "solid"), ("test_loss", "test loss", "dash")):
        fig.add_trace(
            go.Scatter(x=ep, y=col(key), name=name, mode="lines+markers", line=dict(dash=dash), customdata=custom,
                       hovertemplate=f"epoch %{{x}}<br>{name} %{{y:.4f}}{hover_extra}<extra></extra>"),
            row=1, col=1, secondary_y=False,
        )
    fig.add_trace(
        go.Scatter(x=ep, y=col("lr"), name="learning rate", mode="lines", line=dict(color="grey", dash="dot"),
                   hovertemplate="epoch %{x}<br>learning rate %{y:.3g}<extra></extra>"),
        row=1, col=1, secondary_y=True,
    )
    for key, name, dash in (("train_acc", "train accuracy", "solid"), ("test_acc", "test accuracy", "dash")):
        fig.add_trace(
            go.Scatter(x=ep, y=col(key, 100.0), name=name, mode="lines+markers", line=dict(dash=dash), customdata=custom,
                       hovertemplate=f"epoch %{{x}}<br>{name} %{{y:.2f}}%{hover_extra}<extra></extra>"),
            row=1, col=2,
        )
    fig.add_hline(y=SEED_NOTEBOOK_ACCURACY * 100, line=dict(color="crimson", dash="dot"), row=1, col=2,
                  annotation_text="seed notebook 75.6%", annotation_position="bottom right")
    final = next((e for e in reversed(epochs) if e.get("test_acc") is not None), None)
    if final is not None:
        fig.add_trace(
            go.Scatter(x=[final["epoch"]], y=[final["test_acc"] * 100], mode="markers+text", name="final test accuracy",
                       marker=dict(size=12, symbol="star", color="black"), text=[f"{final['test_acc'] * 100:.2f}%"],
                       textposition="top left", hovertemplate="final test accuracy %{y:.2f}%<extra></extra>"),
            row=1, col=2,
        )
    for start in run_starts(epochs)[1:]:  # a warm restart: a fresh optimizer and schedule from these weights
        fig.add_vline(x=start["epoch"] - 0.5, line=dict(color="#555", dash="dash", width=1), row="all", col="all",
                      annotation_text=f"run {start['run']}", annotation_position="top right")
    fig.update_xaxes(title_text="epoch", gridcolor="#eee", tick0=1, dtick=max(1, round(len(ep) / 10)))
    fig.update_yaxes(title_text="cross-entropy", row=1, col=1, secondary_y=False, gridcolor="#eee")
    fig.update_yaxes(title_text="learning rate", row=1, col=1, secondary_y=True, showgrid=False, rangemode="tozero")
    fig.update_yaxes(title_text="%", row=1, col=2, gridcolor="#eee")
    fig.update_layout(legend=dict(orientation="h", y=-0.2), hovermode="closest")
    return page_layout(fig, height=460)


def training_summary(history: dict[str, Any]) -> str:
    epochs = history.get("epochs") or []
    total = sum(float(e.get("epoch_seconds") or 0.0) for e in epochs)
    final = next((e for e in reversed(epochs) if e.get("test_acc") is not None), None)
    acc = f"{final['test_acc'] * 100:.2f}%" if final else "n/a"
    n_test = final.get("test_images") if final else None
    on = f" on {int(n_test):,} test images" if n_test else ""
    starts = run_starts(epochs)
    runs = (f" in {len(starts)} runs (each after the first a warm restart from the weights before it: a fresh "
            f"optimizer and schedule; dashed lines)" if len(starts) > 1 else "")
    return (
        f"{len(epochs)} epochs{runs}, {total / 60:.1f} min of training in total; final test accuracy **{acc}**{on} "
        f"(the dotted red line is the {SEED_NOTEBOOK_LABEL}). Hover a point for its epoch time."
    )


def training_curves() -> tuple[str, Any]:
    """The Training tab: a summary and the curves from history.json, or why there are none."""
    if NOT_OURS:
        return f"**Training curves not available for these weights.** {NOT_OURS}, so there is no training record.", None
    try:
        history = read_json(ASSETS / HISTORY_FILE)
    except AssetError as exc:
        return f"**Training curves not available.** {exc}", None
    try:
        figure = training_figure(history)
    except (KeyError, TypeError, ValueError) as exc:
        return f"**Training curves not available.** `history.json` is incomplete ({exc}).", None
    return training_summary(history), figure


def build(ctx: Ctx) -> None:
    with gr.Tab("Training curves", id="training") as tab:
        summary = gr.Markdown(elem_id="training-summary")
        plot = gr.Plot(label="Loss, accuracy and learning rate per epoch", elem_id="training-plot")
    # Drawn when opened, not at start-up: the server answers its first request sooner.
    tab.select(training_curves, outputs=[summary, plot], api_name="training_curves")
