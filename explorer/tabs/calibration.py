"""Calibration: the reliability diagram before and after temperature scaling."""

from __future__ import annotations

import textwrap
from typing import Any, Sequence

import gradio as gr
import numpy as np
import plotly.graph_objects as go

from insight import testset

from ..context import TEST_SET, user_errors
from ..plots import MARGIN
from ..ui import Ctx


def _reliability_traces(rel: dict[str, Sequence[float]], name: str, colour: str, ece: float) -> list[go.BaseTraceType]:
    lower, upper = np.asarray(rel["bin_lower"], float), np.asarray(rel["bin_upper"], float)
    acc, conf, count = np.asarray(rel["accuracy"], float), np.asarray(rel["confidence"], float), np.asarray(rel["count"])
    used = count > 0
    centres, widths = (lower + upper) / 2, upper - lower
    return [
        go.Bar(
            x=centres[used],
            y=acc[used],
            width=widths[used],
            name=f"{name} accuracy (ECE {ece:.2%})",
            marker=dict(color=colour, opacity=0.55, line=dict(color=colour, width=1)),
            customdata=np.stack([conf[used], count[used]], axis=-1) if used.any() else None,
            hovertemplate="confidence %{customdata[0]:.3f}<br>accuracy %{y:.3f}<br>%{customdata[1]} images<extra>" + name + "</extra>",
        ),
        go.Scatter(
            x=conf[used],
            y=acc[used],
            mode="lines+markers",
            name=f"{name}: accuracy vs mean confidence",
            line=dict(color=colour),
            hoverinfo="skip",
        ),
    ]


def reliability_figure(ev: dict[str, Any]) -> go.Figure:
    """Reliability diagram: accuracy per confidence bin against the diagonal, ECE in the title.

    The gap between each bar and the diagonal is shaded red (over-confidence
    when the bar is below it). The temperature-scaled curve is added when the
    evaluation has one, labelled with the data the temperature was fitted on.
    """
    rel = ev["reliability"]
    fig = go.Figure()
    lower, upper = np.asarray(rel["bin_lower"], float), np.asarray(rel["bin_upper"], float)
    acc, count = np.asarray(rel["accuracy"], float), np.asarray(rel["count"])
    for lo, hi, a, c in zip(lower, upper, acc, count):
        if c > 0:
            mid = (lo + hi) / 2
            fig.add_shape(type="rect", x0=lo, x1=hi, y0=min(a, mid), y1=max(a, mid),
                          fillcolor="rgba(214,39,40,0.25)", line_width=0, layer="below")
    fig.add_traces(_reliability_traces(rel, "trained", "#1f77b4", float(ev["ece"])))
    title = f"Reliability diagram: ECE {float(ev['ece']):.2%} on all {int(ev['n'])} test images"
    bottom = MARGIN["b"]
    annotations = []
    rel_t = ev.get("reliability_after_temperature")
    if rel_t is not None and ev.get("ece_after_temperature") is not None:
        t, fit_on = ev.get("temperature"), ev.get("temperature_fit_on") or "held-out data"
        label = f"T = {float(t):.2f}" if t is not None else "temperature-scaled"
        after = float(ev["ece_after_temperature"])
        fig.add_traces(_reliability_traces(rel_t, label, "#2ca02c", after))
        before = ev.get("ece_before_temperature_on_odd")
        # Compare like with like when the evaluation measured the same held-out images before scaling.
        change = f"{float(before):.2%} -> {after:.2%}" if before is not None else f"{after:.2%}"
        title += f"<br>temperature scaling ({label}): ECE {change}"
        lines = textwrap.wrap(f"Temperature fitted on {fit_on}.", 110)
        annotations.append(dict(text="<br>".join(lines), xref="paper", yref="paper", x=0, y=-0.14,
                                xanchor="left", yanchor="top", align="left", showarrow=False,
                                font=dict(size=11, color="#555")))
        bottom += 16 * len(lines) + 10
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration",
                             line=dict(color="black", dash="dash"), hoverinfo="skip"))
    fig.update_layout(
        title=dict(text=title, font=dict(size=14)),
        xaxis=dict(title="confidence (max softmax probability)", range=[0, 1]),
        yaxis=dict(title="accuracy", range=[0, 1.02]),
        barmode="overlay",
        annotations=annotations,
        margin={**MARGIN, "t": 80, "b": bottom},
        height=480 + bottom - MARGIN["b"],
        legend=dict(x=0.02, y=0.98, bgcolor="rgba(255,255,255,0.7)"),
    )
    return fig


def confidence_histogram_figure(ev: dict[str, Any]) -> go.Figure:
    """How many test images fall in each confidence bin, split into right and wrong."""
    p = ev["predictions"]
    conf = np.asarray(p["confidence"], float)
    correct = np.asarray(p["label"]) == np.asarray(p["pred"])
    fig = go.Figure()
    for mask, name, colour in ((correct, "correct", "#1f77b4"), (~correct, "wrong", "#d62728")):
        fig.add_trace(go.Histogram(x=conf[mask], name=name, marker_color=colour, xbins=dict(start=0, end=1, size=1 / 30)))
    fig.update_layout(title="Confidence of right and wrong predictions", barmode="stack",
                      xaxis=dict(title="confidence", range=[0, 1]), yaxis=dict(title="images"),
                      margin=MARGIN, height=320)
    return fig


def calibration_markdown(ev: dict[str, Any]) -> str:
    """What the reliability diagram says, in sentences: ECE, over/under-confidence, temperature and its data."""
    p = ev["predictions"]
    conf = np.asarray(p["confidence"], dtype=np.float64)
    accuracy = float(np.mean(np.asarray(p["label"]) == np.asarray(p["pred"])))
    mean_conf = float(conf.mean())
    bins = ev.get("ece_bins", len(ev["reliability"]["count"]))
    if abs(mean_conf - accuracy) < 0.01:
        lean = "about as confident as it is accurate"
    elif mean_conf > accuracy:
        lean = "over-confident"
    else:
        lean = "under-confident"
    lines = [
        f"Expected calibration error (ECE, {bins} equal-width confidence bins): **{float(ev['ece']):.2%}** on all "
        f"{int(ev['n']):,} test images. Mean confidence {mean_conf:.1%} against {accuracy:.1%} accuracy: "
        f"the model is {lean} on average."
    ]
    temperature = ev.get("temperature")
    if temperature is None or ev.get("ece_after_temperature") is None or not np.isfinite(float(temperature)):
        lines.append("No temperature was fitted for these weights (evaluation.json has none).")
        return "\n\n".join(lines)
    t = float(temperature)
    effect = "sharpens the probabilities (T < 1)" if t < 1 else "softens the probabilities (T > 1)" if t > 1 else "changes nothing (T = 1)"
    before = ev.get("ece_before_temperature_on_odd")
    change = (f"{float(before):.2%} -> **{float(ev['ece_after_temperature']):.2%}** on the same held-out images"
              if before is not None else f"**{float(ev['ece_after_temperature']):.2%}** after scaling")
    lines.append(
        f"**Temperature scaling:** dividing the logits by T = {t:.2f} {effect}; it never changes the predicted "
        f"class, so accuracy stays the same. ECE {change}."
    )
    lines.append(f"*Which data:* the temperature was fitted on {ev.get('temperature_fit_on') or 'held-out data (not recorded)'}.")
    return "\n\n".join(lines)


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
        calibration_markdown(ev),
        reliability_figure(ev),
        confidence_histogram_figure(ev),
        True,
    )


def build(ctx: Ctx) -> None:
    with gr.Tab("Calibration", id="calibration") as tab:
        gr.Markdown(
            "How sure is the model when it is wrong? The reliability diagram bins all evaluated test predictions by "
            "confidence (the top softmax probability) and plots each bin's accuracy: a calibrated model sits on "
            "the diagonal. The expected calibration error (ECE) is the gap, weighted by how many images each bin holds."
        )
        text = gr.Markdown(elem_id="calibration-summary")
        reliability = gr.Plot(label="Reliability diagram", elem_id="reliability-plot")
        histogram = gr.Plot(label="Confidence of right and wrong predictions", elem_id="confidence-plot")
        loaded = gr.State(False)
    tab.select(calibration, inputs=[loaded], outputs=[text, reliability, histogram, loaded], api_name="calibration")
