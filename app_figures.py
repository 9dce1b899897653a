"""Plotly figures and Markdown for the explorer: plain data in, figure out.

Kept beside ``app.py`` (not in ``resnet/``) because the model package must not
depend on plotly. No function here touches the model or the file system except
``read_json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

# The seed notebook this project answers: a Keras ResNet-50 on CIFAR-10 that
# reached this test accuracy after 50 epochs without data augmentation.
SEED_NOTEBOOK_ACCURACY = 0.756
SEED_NOTEBOOK_LABEL = "seed notebook: Keras ResNet-50, 50 epochs, no augmentation (75.6%)"

_STAGE_COLOURS = {"layer1": "#4C78A8", "layer2": "#F58518", "layer3": "#54A24B", "layer4": "#B279A2"}
_FONT = dict(family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size=12)


def read_json(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(data, note): data is None with a sentence saying why when it cannot be shown."""
    if not path.is_file():
        return None, f"`{path.name}` is not available in this build, so there is nothing to plot yet."
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return None, f"`{path.name}` could not be read ({exc})."
    if not isinstance(data, dict):
        return None, f"`{path.name}` does not hold a JSON object."
    return data, ""


def _layout(fig: go.Figure, height: int, title: str | None = None) -> go.Figure:
    fig.update_layout(
        height=height,
        margin=dict(l=40, r=20, t=60 if title else 40, b=40),
        font=_FONT,
        title=dict(text=title, x=0.01) if title else None,
        paper_bgcolor="white",
        plot_bgcolor="white",
    )
    return fig


def _unit(lo: float, hi: float) -> list[float]:
    """A subplot domain clamped to [0, 1] (float sums can land a hair outside)."""
    return [min(max(lo, 0.0), 1.0), min(max(hi, 0.0), 1.0)]


def _image_grid(
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
        layout[f"xaxis{axis}"] = dict(domain=_unit(x0, x0 + width), anchor=f"y{axis}", **hidden)
        layout[f"yaxis{axis}"] = dict(
            domain=_unit(y1 - height, y1), anchor=f"x{axis}", autorange="reversed", scaleanchor=f"x{axis}", **hidden
        )
        titles.append(dict(text=title, x=x0 + width / 2, y=y1, xref="paper", yref="paper", xanchor="center",
                           yanchor="bottom", showarrow=False, font=dict(size=10)))
    layout["annotations"] = titles
    layout["coloraxis"] = coloraxis
    # Skipping plotly's validation saves ~20 ms per figure; the tests validate these dicts.
    return go.Figure(dict(data=data, layout=layout), _validate=False)


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
    fig = _image_grid(
        panels,
        cols,
        dict(colorscale="Viridis", cmin=0.0, cmax=vmax, colorbar=dict(title=dict(text="activation"))),
        v_space=0.06 if rows > 1 else 0.0,
    )
    title = (
        f"{name}: {n} most active of {total_channels} channels, each {h}x{w} "
        f"(one cell = {stride}x{stride} input pixels)"
    )
    return _layout(fig, height=100 + rows * 150, title=title)


def anatomy_figure(block: str, maps: dict[str, np.ndarray], channel: int | None) -> go.Figure:
    """x, F(x), F(x) + x and ReLU(F(x) + x) side by side on one diverging scale (blue < 0 < red)."""
    what = "mean over channels" if channel is None else f"channel {channel}"
    bound = max(float(np.abs(m).max()) for m in maps.values()) or 1.0
    panels = [(label, m, f"{label}<br>row %{{y}}, col %{{x}}<br>value %{{z:.4f}}<extra></extra>") for label, m in maps.items()]
    fig = _image_grid(
        panels,
        len(panels),
        dict(colorscale="RdBu", cmin=-bound, cmax=bound, colorbar=dict(title=dict(text="value"))),
        h_space=0.03,
    )
    h, w = next(iter(maps.values())).shape
    return _layout(fig, height=300, title=f"Block {block} ({h}x{w}, {what}): out = ReLU(F(x) + x)")


def ratio_bar(names: Sequence[str], ratios: np.ndarray, selected: str | None = None) -> go.Figure:
    """||F(x)|| / ||x|| for every block, coloured by stage."""
    colours = [_STAGE_COLOURS.get(n.split(".")[0], "#888") for n in names]
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
    return _layout(fig, height=320, title="How much each block changes its input, for this image")


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
    fig.update_xaxes(title_text="epoch", gridcolor="#eee", tick0=1, dtick=max(1, round(len(ep) / 10)))
    fig.update_yaxes(title_text="cross-entropy", row=1, col=1, secondary_y=False, gridcolor="#eee")
    fig.update_yaxes(title_text="learning rate", row=1, col=1, secondary_y=True, showgrid=False, rangemode="tozero")
    fig.update_yaxes(title_text="%", row=1, col=2, gridcolor="#eee")
    fig.update_layout(legend=dict(orientation="h", y=-0.2), hovermode="closest")
    return _layout(fig, height=460)


def training_summary(history: dict[str, Any]) -> str:
    epochs = history.get("epochs") or []
    total = sum(float(e.get("epoch_seconds") or 0.0) for e in epochs)
    final = next((e for e in reversed(epochs) if e.get("test_acc") is not None), None)
    acc = f"{final['test_acc'] * 100:.2f}%" if final else "n/a"
    n_test = final.get("test_images") if final else None
    on = f" on {int(n_test):,} test images" if n_test else ""
    return (
        f"{len(epochs)} epochs, {total / 60:.1f} min of training in total; final test accuracy **{acc}**{on} "
        f"(the dotted red line is the {SEED_NOTEBOOK_LABEL}). Hover a point for its epoch time."
    )


def architecture_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| stage | blocks | output shape (C, H, W) | parameters | what |", "|---|---:|---|---:|---|"]
    for r in rows:
        shape = " x ".join(str(s) for s in r["output_shape"])
        lines.append(f"| {r['stage']} | {r['blocks'] or ''} | {shape} | {r['parameters']:,} | {r['description']} |")
    total = sum(r["parameters"] for r in rows)
    lines.append(f"| **total** | {sum(r['blocks'] for r in rows)} | | **{total:,}** | |")
    return "\n".join(lines)


def _pct(v: Any) -> str:
    return "not measured" if v is None else f"{float(v) * 100:.2f}%"


def card_markdown(card: dict[str, Any]) -> str:
    if not card:
        return "No model card (`assets/model_card.json`) is available."
    arch = card.get("architecture", {})
    secs = card.get("training_seconds")
    items = [
        ("Architecture", f"{arch.get('name', 'ResNet-50')}, {arch.get('stem', 'cifar')} stem, blocks {arch.get('layers', '')}, "
                         f"{arch.get('parameters', 0):,} parameters"),
        ("Data set", card.get("dataset", "unknown")),
        ("Test accuracy", _pct(card.get("test_accuracy"))),
        ("Test accuracy with flip TTA", _pct(card.get("test_accuracy_tta"))),
        ("Epochs", card.get("epochs", "unknown")),
        ("Training time", "unknown" if secs is None else f"{float(secs) / 60:.1f} min"),
        ("Device", card.get("device", "unknown")),
        ("Input", f"{card.get('input_size', 32)}x{card.get('input_size', 32)} RGB, normalised with mean {card.get('mean')} / std {card.get('std')}"),
        ("Notes", card.get("notes", "")),
    ]
    return "\n".join(f"- **{k}:** {v}" for k, v in items)
