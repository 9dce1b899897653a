"""Plotly figures and short Markdown summaries for the insight tabs: test-set
explorer, calibration, robustness, sanity check.

Builders only: each takes the plain data that ``resnet.testset``,
``resnet.robustness`` or ``resnet.sanity`` returns and gives back a
``plotly.graph_objects.Figure`` or a Markdown string. No model, no Gradio.
"""

from __future__ import annotations

import textwrap
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go

from resnet.constants import CLASSES
from resnet.robustness import STRENGTH_UNITS, SweepPoint

_MARGIN = dict(l=60, r=20, t=60, b=50)


def confusion_matrix_figure(ev: dict[str, Any], normalise: bool = False) -> go.Figure:
    """Heatmap of the confusion matrix (rows true, columns predicted) with counts in the cells.

    ``normalise`` colours by the row fraction (recall per class) so rare and
    common mistakes are comparable; the cell text and hover keep the counts.
    """
    cm = np.asarray(ev["confusion_matrix"], dtype=np.int64)
    row_totals = cm.sum(axis=1, keepdims=True)
    frac = cm / np.maximum(row_totals, 1)
    z = frac if normalise else cm
    names = list(CLASSES)
    hover = [
        [f"true {names[t]}, predicted {names[p]}: {cm[t, p]} ({frac[t, p]:.1%} of {names[t]})" for p in range(len(names))]
        for t in range(len(names))
    ]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=names,
            y=names,
            text=cm,
            texttemplate="%{text}",
            customdata=hover,
            hovertemplate="%{customdata}<extra></extra>",
            colorscale="Blues",
            colorbar=dict(title="fraction of row" if normalise else "images"),
            # The diagonal dwarfs every mistake; a log-ish cap would lie about counts,
            # so clip the colour scale at the largest off-diagonal value instead.
            zmax=_offdiag_max(z) if not normalise else None,
            zmin=0,
        )
    )
    fig.update_layout(
        title=f"Confusion matrix, {int(cm.sum())} test images" + (" (colour: row fraction)" if normalise else ""),
        xaxis=dict(title="predicted", side="bottom", tickangle=-45),
        yaxis=dict(title="true", autorange="reversed"),
        margin=_MARGIN,
        height=520,
    )
    return fig


def _offdiag_max(z: np.ndarray) -> float | None:
    off = z[~np.eye(len(z), dtype=bool)]
    top = float(off.max()) if off.size else 0.0
    return top * 1.25 if top > 0 else None


def per_class_accuracy_figure(ev: dict[str, Any]) -> go.Figure:
    """Bars of per-class accuracy with the overall accuracy as a dashed line."""
    acc = np.asarray(ev["per_class_accuracy"], dtype=np.float64)
    overall = float(ev["accuracy"])
    fig = go.Figure(
        go.Bar(
            x=list(CLASSES),
            y=acc,
            text=[f"{a:.1%}" for a in acc],
            textposition="outside",
            marker_color=["#d62728" if a == acc.min() else "#1f77b4" for a in acc],
            hovertemplate="%{x}: %{y:.2%}<extra></extra>",
        )
    )
    # The overall figure goes in the title: a label on the line would sit on top of the bars.
    fig.add_hline(y=overall, line_dash="dash", line_color="gray")
    fig.update_layout(
        title=f"Accuracy per class (dashed: overall {overall:.1%})",
        yaxis=dict(title="accuracy", tickformat=".0%", range=[max(0.0, float(acc.min()) - 0.1), 1.05]),
        margin=_MARGIN,
        height=380,
    )
    return fig


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
    bottom = _MARGIN["b"]
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
        margin={**_MARGIN, "t": 80, "b": bottom},
        height=480 + bottom - _MARGIN["b"],
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
                      margin=_MARGIN, height=320)
    return fig


def robustness_line_figure(points: Sequence[SweepPoint | Sequence[float]], kind: str, true_label: int | None = None) -> go.Figure:
    """True-class probability as the perturbation strength grows, marking where the prediction flips."""
    pts = [SweepPoint(*p) for p in points]
    x = [p.strength for p in pts]
    ref = CLASSES[true_label] if true_label is not None else "reference class"
    fig = go.Figure(
        go.Scatter(
            x=x,
            y=[p.true_prob for p in pts],
            mode="lines+markers",
            name=f"P({ref})",
            customdata=[[CLASSES[p.pred], p.pred_prob] for p in pts],
            hovertemplate=f"strength %{{x:.3g}}<br>P({ref}) %{{y:.1%}}<br>predicted %{{customdata[0]}} (%{{customdata[1]:.1%}})<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[p.pred_prob for p in pts],
            mode="markers+text",
            name="top prediction",
            text=[CLASSES[p.pred] for p in pts],
            textposition="top center",
            marker=dict(symbol="x", color=["#2ca02c" if true_label is None or p.pred == true_label else "#d62728" for p in pts]),
            hoverinfo="skip",
        )
    )
    fig.update_layout(
        title=f"Confidence under {kind}",
        xaxis=dict(title=STRENGTH_UNITS.get(kind, "strength")),
        yaxis=dict(title="probability", range=[0, 1.08], tickformat=".0%"),
        margin=_MARGIN,
        height=340,
        legend=dict(orientation="h", y=-0.25),
    )
    return fig


def sanity_figure(result: dict[str, Any]) -> go.Figure:
    """Spearman rank correlation (trained vs randomised Grad-CAM) per stage, one line per cascade step."""
    fig = go.Figure()
    for step in result["steps"]:
        stages = list(step["metrics"])
        rho = [step["metrics"][s]["spearman"] for s in stages]
        fig.add_trace(go.Bar(x=stages, y=[None if not np.isfinite(r) else r for r in rho],
                             name="randomised " + "+".join(step["randomised"]),
                             hovertemplate="%{x}: Spearman %{y:.2f}<extra>%{fullData.name}</extra>"))
    fig.update_layout(
        title=f"Does the Grad-CAM for {CLASSES[result['target']]} survive random weights?",
        yaxis=dict(title="Spearman rank correlation", range=[-1, 1]),
        xaxis=dict(title="Grad-CAM layer"),
        margin=_MARGIN,
        height=340,
    )
    return fig


# ----- Markdown summaries ---------------------------------------------------------------


def test_set_markdown(summary: dict[str, Any]) -> str:
    """The test-set tab's headline, from ``resnet.testset.accuracy_summary``."""
    tta = summary.get("accuracy_tta")
    tta_text = f" ({tta:.2%} with horizontal-flip test-time augmentation)" if tta is not None else ""
    dataset = f" ({summary['dataset']})" if summary.get("dataset") else ""
    text = (
        f"**{summary['accuracy']:.2%}** of the {summary['n']:,} test images{dataset} are classified "
        f"correctly{tta_text}. Weakest class: **{summary['worst_class']}** ({summary['worst_class_accuracy']:.1%})."
    )
    if summary.get("most_confused"):
        text += f" Most frequent mistake: **{summary['most_confused']}**."
    return text


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
