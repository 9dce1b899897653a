"""Plotting helpers every tab's figures share: one font, one page layout, stage colours, image grids.

Plain data in, ``plotly.graph_objects.Figure`` out; nothing here touches the
model or the file system.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go

STAGE_COLOURS = {"layer1": "#4C78A8", "layer2": "#F58518", "layer3": "#54A24B", "layer4": "#B279A2"}


FONT = dict(family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size=12)
MARGIN = dict(l=60, r=20, t=60, b=50)  # for figures with axis titles on both axes


def page_layout(fig: go.Figure, height: int, title: str | None = None) -> go.Figure:
    fig.update_layout(
        height=height,
        margin=dict(l=40, r=20, t=60 if title else 40, b=40),
        font=FONT,
        title=dict(text=title, x=0.01) if title else None,
        paper_bgcolor="white",
        plot_bgcolor="white",
    )
    return fig


def unit_domain(lo: float, hi: float) -> list[float]:
    """A subplot domain clamped to [0, 1] (float sums can land a hair outside)."""
    return [min(max(lo, 0.0), 1.0), min(max(hi, 0.0), 1.0)]


def image_grid(
    panels: Sequence[tuple[str, np.ndarray, str]],
    cols: int,
    coloraxis: dict[str, Any],
    h_space: float = 0.02,
    v_space: float = 0.06,
) -> go.Figure:
    """Heat maps in a grid, row 0 of each image at the top, square cells, one colour scale.

    ``panels`` holds (title, 2-D array, hover template). Built as one figure
    dict: plotly's make_subplots/add_trace re-validate the whole grid on every
    call and cost ~30 ms per panel, ten times the model's own time.
    """
    n = len(panels)
    rows = max(1, math.ceil(n / cols))
    width = (1.0 - h_space * (cols - 1)) / cols
    height = (1.0 - v_space * (rows - 1)) / rows
    data, layout, titles = [], {}, []
    for k, (title, z, hover) in enumerate(panels):
        r, c = divmod(k, cols)
        x0 = c * (width + h_space)
        y1 = 1.0 - r * (height + v_space)
        axis = "" if k == 0 else str(k + 1)
        data.append(dict(type="heatmap", z=z, coloraxis="coloraxis", xaxis=f"x{axis}", yaxis=f"y{axis}", hovertemplate=hover))
        hidden = dict(showticklabels=False, showgrid=False, zeroline=False, ticks="", constrain="domain")
        layout[f"xaxis{axis}"] = dict(domain=unit_domain(x0, x0 + width), anchor=f"y{axis}", **hidden)
        layout[f"yaxis{axis}"] = dict(
            domain=unit_domain(y1 - height, y1), anchor=f"x{axis}", autorange="reversed", scaleanchor=f"x{axis}", **hidden
        )
        titles.append(dict(text=title, x=x0 + width / 2, y=y1, xref="paper", yref="paper", xanchor="center",
                           yanchor="bottom", showarrow=False, font=dict(size=10)))
    layout["annotations"] = titles
    layout["coloraxis"] = coloraxis
    # Skipping plotly's validation saves ~20 ms per figure; the tests validate these dicts.
    return go.Figure(dict(data=data, layout=layout), _validate=False)

