"""Inside a residual block: x, F(x), F(x) + x and ReLU(F(x) + x), and ||F(x)|| / ||x|| for all 16 blocks."""

from __future__ import annotations

from typing import Sequence

import gradio as gr
import numpy as np
import plotly.graph_objects as go

from insight import anatomy

from ..context import BLOCK_NAMES, CACHE, CHANNELS, SERVING, user_errors
from ..plots import STAGE_COLOURS, image_grid, page_layout
from ..ui import Ctx


def anatomy_figure(block: str, maps: dict[str, np.ndarray], channel: int | None) -> go.Figure:
    """x, F(x), F(x) + x and ReLU(F(x) + x) side by side on one diverging scale (blue < 0 < red)."""
    what = "mean over channels" if channel is None else f"channel {channel}"
    bound = max(float(np.abs(m).max()) for m in maps.values()) or 1.0
    panels = [(label, m, f"{label}<br>row %{{y}}, col %{{x}}<br>value %{{z:.4f}}<extra></extra>") for label, m in maps.items()]
    fig = image_grid(
        panels,
        len(panels),
        dict(colorscale="RdBu", cmin=-bound, cmax=bound, colorbar=dict(title=dict(text="value"))),
        h_space=0.03,
    )
    h, w = next(iter(maps.values())).shape
    return page_layout(fig, height=300, title=f"Block {block} ({h}x{w}, {what}): out = ReLU(F(x) + x)")


def ratio_bar(names: Sequence[str], ratios: np.ndarray, selected: str | None = None) -> go.Figure:
    """||F(x)|| / ||x|| for every block, coloured by stage."""
    colours = [STAGE_COLOURS.get(n.split(".")[0], "#888") for n in names]
    fig = go.Figure(
        go.Bar(
            x=list(names),
            y=[float(r) for r in ratios],
            marker=dict(color=colours, line=dict(color=["black" if n == selected else c for n, c in zip(names, colours)], width=[3 if n == selected else 0 for n in names])),
            hovertemplate="block %{x}<br>||F(x)|| / ||x|| = %{y:.3f}<extra></extra>",
        )
    )
    fig.add_hline(y=1.0, line=dict(dash="dot", color="grey"), annotation_text="F(x) as large as x", annotation_position="top left")
    fig.update_yaxes(title_text="||F(x)|| / ||x||", rangemode="tozero", gridcolor="#eee")
    fig.update_xaxes(title_text="bottleneck block (selected one outlined)")
    return page_layout(fig, height=320, title="How much each block changes its input, for this image")


@user_errors
def block_anatomy(image: str | None, block: str, view: str, channel: float) -> tuple:
    if image is None:
        return None, None
    if block not in BLOCK_NAMES:
        raise ValueError(f"Unknown block {block!r}; blocks are {BLOCK_NAMES[0]} .. {BLOCK_NAMES[-1]}.")
    chosen = None
    if view == "one channel":
        channels = CHANNELS[block.split(".")[0]]
        chosen = int(channel)
        if chosen >= channels:
            gr.Warning(f"Block {block} has {channels} channels (0..{channels - 1}); showing channel {channels - 1}.")
            chosen = channels - 1
    entry = CACHE.entry(image)
    result = CACHE.memo(entry, ("anatomy", block, chosen),
                        lambda: anatomy.residual_anatomy(SERVING, entry.input(), block, chosen))
    return (
        anatomy_figure(result.block, result.maps, result.channel),
        ratio_bar(result.names, result.ratios, result.block),
    )


def build(ctx: Ctx) -> None:
    with gr.Tab("Residual blocks", id="blocks") as tab:
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
        parts = gr.Plot(label="x, F(x), F(x) + x, ReLU(F(x) + x)", elem_classes=["anatomy-plot"])
        ratios = gr.Plot(label="||F(x)|| / ||x|| over all 16 blocks", elem_classes=["anatomy-plot"])
    gr.on(
        [tab.select, block.change, view.change, channel.release],
        block_anatomy,
        inputs=[ctx.image, block, view, channel],
        outputs=[parts, ratios],
        api_name="block_anatomy",
    )
    ctx.follow("blocks", block_anatomy, inputs=[block, view, channel], outputs=[parts, ratios])
