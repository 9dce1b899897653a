"""Feature maps: the most active channels of the stem and of every stage."""

from __future__ import annotations

import math
from typing import Sequence

import gradio as gr
import numpy as np
import plotly.graph_objects as go

from insight import activations
from resnet import STAGE_NAMES

from ..context import CHANNELS, MODEL, STRIDES, model_input, user_errors
from ..plots import image_grid, page_layout
from ..ui import Ctx


def feature_grid(
    name: str,
    indices: Sequence[int],
    maps: np.ndarray,
    stride: int,
    total_channels: int,
) -> go.Figure:
    """A grid of heat maps, one per channel, on one shared colour scale."""
    n = len(indices)
    cols = max(1, min(8, n))  # the Plot spans the page: 8 across keeps each map ~140 px wide
    rows = math.ceil(n / cols)
    h, w = maps.shape[1:]
    vmax = float(maps.max()) if maps.size and maps.max() > 0 else 1.0
    panels = [
        (f"ch {int(i)}", m, f"channel {int(i)}<br>row %{{y}}, col %{{x}}<br>value %{{z:.4f}}<extra>{name}</extra>")
        for i, m in zip(indices, maps)
    ]
    fig = image_grid(
        panels,
        cols,
        dict(colorscale="Viridis", cmin=0.0, cmax=vmax, colorbar=dict(title=dict(text="activation"))),
        v_space=0.06 if rows > 1 else 0.0,
    )
    title = (
        f"{name}: {n} most active of {total_channels} channels, each {h}x{w} "
        f"(one cell = {stride}x{stride} input pixels)"
    )
    return page_layout(fig, height=100 + rows * 150, title=title)


N_FEATURE_PLOTS = 5


def feature_figures(features: dict[str, np.ndarray], n: int) -> list:
    out = []
    for name in ("stem", *STAGE_NAMES):
        top = activations.top_channels(features[name], int(n))
        out.append(feature_grid(name, top.indices, top.maps, STRIDES[name], CHANNELS[name]))
    return out


@user_errors
def feature_maps(image: str | None, n_channels: float) -> list:
    if image is None:
        return [None] * N_FEATURE_PLOTS
    x = model_input(image)
    # A new channel count needs the activations only: no Grad-CAM backward pass.
    return feature_figures(activations.stage_features(MODEL, x.tensor), n_channels)


def build(ctx: Ctx) -> None:
    with gr.Tab("Feature maps", id="features"):
        n = gr.Slider(1, 64, value=16, step=1, label="Channels per stage (most active first, by mean activation)")
        gr.Markdown("Each panel is one channel; all panels of a stage share one colour scale. Hover for channel and value.")
        plots = [gr.Plot(label=name, elem_classes=["feature-plot"]) for name in ("stem", *STAGE_NAMES)]
    ctx.controls["n_channels"] = n
    ctx.outputs["feature_plots"] = plots
    n.release(feature_maps, inputs=[ctx.image, n], outputs=plots, api_name="feature_maps")
