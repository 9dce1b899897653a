"""Sanity check: does the Grad-CAM depend on what the model learned (Adebayo et al. 2018)?"""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
import plotly.graph_objects as go

from insight import render, sanity
from resnet import CLASSES, STAGE_NAMES

from ..context import DISPLAY, MODEL, check_stage, model_input, no_image, user_errors
from ..plots import MARGIN
from ..ui import Ctx


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
        margin=MARGIN,
        height=340,
    )
    return fig


@user_errors
def sanity_check(image: str | None, cascade: bool, stage: str) -> tuple:
    """Grad-CAM with the trained weights vs with layer4 (or layer4..layer1) re-initialised."""
    if image is None:
        no_image()
        return [], None, "", None
    stage = check_stage(stage)
    x = model_input(image)
    stages = tuple(reversed(STAGE_NAMES)) if cascade else ("layer4",)
    result = sanity.sanity_check(MODEL, x.tensor, None, stages=stages)
    target = CLASSES[result["target"]]
    trained = result["trained"]["maps"][stage]
    gallery = [(render.overlay(x.seen, trained, size=DISPLAY), f"trained weights · {stage} · max {float(trained.max()):.2g}")]
    lines = [
        f"Grad-CAM at **{stage}** for **{target}** (the trained model's prediction), with the trained weights and "
        f"with {'one more stage re-initialised per step, from layer4 down' if cascade else 'layer4 re-initialised'} "
        "(the fc layer keeps its trained weights). Each map has its own colour scale: rank correlation ignores scale."
    ]
    summary = {"target": target, "stage": stage, "steps": []}
    for step in result["steps"]:
        name = "+".join(step["randomised"])
        cam = step["maps"][stage]
        metrics = step["metrics"][stage]
        gallery.append((render.overlay(x.seen, cam, size=DISPLAY), f"{name} re-initialised · max {float(cam.max()):.2g}"))
        now = int(np.argmax(step["probs"]))
        lines.append(f"- **{name} re-initialised** (now predicts {CLASSES[now]}): {sanity.verdict(metrics)}")
        summary["steps"].append({
            "randomised": step["randomised"],
            "spearman": _finite_or_none(metrics["spearman"]),
            "pearson": _finite_or_none(metrics["pearson"]),
            "top_overlap": float(metrics["top_overlap"]),
            "trained_flat": bool(metrics["trained_flat"]),
            "randomised_flat": bool(metrics["randomised_flat"]),
            "verdict": sanity.verdict(metrics),
            "predicted_after": CLASSES[now],
        })
    return gallery, sanity_figure(result), "\n".join(lines), summary


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN: an undefined correlation (a flat map) becomes null."""
    return float(value) if np.isfinite(value) else None


def sanity_for(image: str | None, cascade: bool, stage: str) -> tuple:
    """The check, and the image it was made for (kept in the page, so a result never outlives its image)."""
    return (*sanity_check(image, cascade, stage), image)


def drop_stale(image: str | None, checked: str | None) -> tuple:
    """The tab comes on screen: a result made for another image than the current one is cleared
    (the check is slow, so it waits for the button). A new image while the tab is on screen is
    checked at once instead (the follower)."""
    if checked is None or checked == image:
        return (gr.skip(),) * 5
    return [], None, "", None, None


def build(ctx: Ctx) -> None:
    with gr.Tab("Sanity check", id="sanity") as tab:
        gr.Markdown(
            "Does the Grad-CAM depend on what the model learned? The model-randomisation check of Adebayo et al. "
            "(2018, *Sanity Checks for Saliency Maps*): recompute the map with the last stage's weights "
            "re-initialised (He init, fresh BatchNorm) and compare the two maps by Spearman rank correlation. "
            "A map that survives random weights (high correlation) explains the image or the architecture, "
            "not the model. Cascade re-initialises layer4, then layer4+layer3, and so on down to layer1."
        )
        with gr.Row():
            cascade = gr.Checkbox(False, label="Cascade: layer4, then layer3, layer2, layer1 too")
            stage = gr.Radio(list(STAGE_NAMES), value="layer4", label="Compare the Grad-CAM at")
            run = gr.Button("Run the sanity check", variant="primary", elem_id="sanity-button")
        maps = gr.Gallery(label="Grad-CAM: trained vs re-initialised", columns=5, rows=1,
                          object_fit="contain", format="png", allow_preview=False, elem_id="sanity-gallery")
        verdict = gr.Markdown(elem_id="sanity-verdict")
        figure = gr.Plot(label="Spearman rank correlation per Grad-CAM layer", elem_id="sanity-plot")
        with gr.Accordion("Numbers", open=False):
            numbers = gr.JSON(label="metrics")
        checked = gr.State(None)  # the image the result shown was made for
    outputs = [maps, figure, verdict, numbers, checked]
    run.click(sanity_for, inputs=[ctx.image, cascade, stage], outputs=outputs, api_name="sanity_check")
    tab.select(drop_stale, inputs=[ctx.image, checked], outputs=outputs, queue=False, api_name="sanity_drop_stale",
               api_visibility="private")
    ctx.follow("sanity", sanity_for, inputs=[cascade, stage], outputs=outputs)
