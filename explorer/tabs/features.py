"""Feature maps: the most active channels of the stem and of every stage, and the channel atlas.

The atlas (``insight.atlas``, shipped as assets/channel_atlas.npz) answers
"what does this channel respond to?" with the test images that excite it most,
its mean activation per class and its map on the current image. It is read
the first time the tab opens, and nothing here runs while the tab is hidden.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import gradio as gr
import numpy as np
import plotly.graph_objects as go
import torch

from insight import activations, atlas, render, testset
from resnet import CLASSES, FEATURE_NAMES, STAGE_NAMES, preprocess

from ..cache import Entry
from ..context import ATLAS, CACHE, CHANNELS, DISPLAY, MODEL, STRIDES, TEST_SET, user_errors
from ..plots import MARGIN, image_grid, page_layout
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
    # The activations come with the image's analysis (the cache): no network pass here.
    return feature_figures(CACHE.entry(image).features, n_channels)


# ----- the channel atlas ----------------------------------------------------------------------

ATLAS_THUMB = 128  # side in px of an atlas image: 4x the 32x32 the network saw
SHORTCUT_STAGE = "layer4"
SHORTCUT_CHANNELS = 8
SELECTIVITY_TEXT = (
    "Selectivity index SI = (mu_max - mu_rest) / (mu_max + mu_rest), with mu_max the channel's largest class mean "
    "and mu_rest the mean of the other nine: 0 = every class excites it equally, 1 = only one class does."
)


def _atlas() -> atlas.Atlas | None:
    try:
        return ATLAS.get()
    except atlas.AtlasError:
        return None


def _unavailable() -> str:
    return f"**The channel atlas is not available.** {ATLAS.problem()}"


def _weights_warning(a: atlas.Atlas) -> str:
    if ATLAS.matches_weights():
        return ""
    made_for = a.meta.get("weights_sha256") or "unknown weights"
    served = ATLAS.served_sha256() or "unknown"
    return (
        f"**This atlas does not describe the model on this page:** it was computed for weights with sha256 "
        f"`{made_for[:12]}`, the app serves `{served[:12]}`. Its images and class means belong to those weights; "
        f"{atlas.HOW_TO_MAKE}\n\n"
    )


def atlas_overview_markdown(a: atlas.Atlas) -> str:
    """Where the atlas comes from, and one table row per stage: dead channels and selectivity."""
    meta = a.meta
    wall, cpu = meta.get("wall_seconds"), meta.get("cpu_seconds")
    # Both: on a GPU the wall time is the cost; on a shared CPU the process CPU time is the honest one.
    cost = (f" in {wall:.0f} s on {meta.get('device', 'an unknown device')} ({cpu:.0f} s of process CPU time)"
            if wall is not None and cpu is not None else "")
    rows = []
    for s in a.stages.values():
        summary = atlas.stage_summary(s)
        counts = summary["preferred_class_counts"]
        favourite = f"{CLASSES[int(np.argmax(counts))]} ({max(counts)})" if any(counts) else "n/a"
        median = "n/a" if summary["selectivity_median"] is None else f"{summary['selectivity_median']:.2f}"
        rows.append(f"| {s.name} | {s.channels} | {summary['dead']} | {median} | {summary['selective']} | {favourite} |")
    return (
        _weights_warning(a)
        + f"Each channel's {a.top_k} most exciting test images, ranked by the largest value of its map, out of all "
        f"{a.n_images:,} images of the {meta.get('dataset') or 'test set'}; computed for the weights with sha256 "
        f"`{str(meta.get('weights_sha256', 'unknown'))[:12]}`{cost}. A channel is *dead* when it is 0 on every cell of "
        f"every test image. {SELECTIVITY_TEXT}\n\n"
        "| stage | channels | dead | median SI (live) | SI >= 0.5 | class most often preferred |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows)
    )


def _predictions(a: atlas.Atlas) -> tuple[np.ndarray | None, str]:
    try:
        ev = TEST_SET.evaluation
    except testset.TestSetError:
        return None, "Predicted classes are not shown: there is no test-set evaluation (evaluation.json)."
    return atlas.aligned_predictions(a, ev)


def _stage_maps(images: np.ndarray, stage: str) -> np.ndarray:
    """The stage's maps (N, C, h, w) for uint8 test images: one plain forward, no gradients."""
    with torch.inference_mode():
        x = preprocess.normalise(preprocess.images_to_pixels(images))
        return MODEL.forward_intermediates(x).features[stage].float().numpy()


def _caption(item: atlas.TopImage) -> str:
    """'cat / dog · #6215 · max 0.861 at (3, 4)': the classes first, as a tile shows only the caption's start."""
    pred = "?" if item.pred is None else CLASSES[item.pred]
    return f"{CLASSES[item.label]} / {pred} · #{item.row} · max {item.activation:.3g} at {item.cell}"


def _check_stage(stage: str) -> str:
    if stage not in FEATURE_NAMES:
        raise ValueError(f"Unknown stage {stage!r}; use one of {', '.join(FEATURE_NAMES)}.")
    return stage


def _check_channel(stage: str, channel: Any) -> int:
    try:
        value = float(channel)
    except (TypeError, ValueError):
        raise ValueError(f"A channel is a whole number; got {channel!r}.") from None
    if not value.is_integer() or not 0 <= value < CHANNELS[stage]:
        raise ValueError(f"{stage} has {CHANNELS[stage]} channels, numbered 0..{CHANNELS[stage] - 1}; got {channel!r}.")
    return int(value)


@user_errors
def channel_atlas(stage: str, channel: float) -> tuple:
    """One channel's top test images (activation overlaid, true/predicted class in the caption) and its class means."""
    stage = _check_stage(stage)
    channel = _check_channel(stage, channel)
    a = _atlas()
    if a is None:
        return [], {}, _unavailable()
    preds, why_no_preds = _predictions(a)
    top = atlas.top_images(a, stage, channel, preds)
    details = atlas.channel_details(a, stage, channel)
    if not top:
        note = (f"**{stage} channel {channel} is dead:** it is 0 on every cell of all {a.n_images:,} test images, "
                "so no test image excites it.")
        return [], details, _weights_warning(a) + note
    maps = _stage_maps(np.stack([t.image for t in top]), stage)[:, channel]
    vmax = top[0].activation  # one colour scale: red = the channel's highest activation on the test set
    items = [(render.overlay(t.image, m, vmax=vmax, size=ATLAS_THUMB), _caption(t)) for t, m in zip(top, maps)]
    details["top"] = [{"row": t.row, "activation": t.activation, "cell": list(t.cell), "true": CLASSES[t.label],
                       "pred": None if t.pred is None else CLASSES[t.pred]} for t in top]
    si = details["selectivity"]
    note = (
        f"**{stage} channel {channel}** prefers **{details['preferred_class']}** (selectivity {si:.2f}). "
        f"Its {len(top)} most exciting of {a.n_images:,} test images, with its map overlaid on one colour scale "
        f"(red = {vmax:.3g}, its highest activation on the test set). Captions: true / predicted class, test image "
        f"number, and the channel's maximum with its cell (row, column) in the "
        f"{a.stages[stage].grid[0]}x{a.stages[stage].grid[1]} map; click an image to enlarge it."
        + ("" if len(top) == a.top_k else f" Only {len(top)} test images excite it at all.")
        + (f" {why_no_preds}" if why_no_preds else "")
    )
    return items, details, _weights_warning(a) + note


def class_means_figure(details: dict[str, Any] | None) -> go.Figure | None:
    """Bars of the channel's mean activation per class, its preferred class highlighted."""
    if not details or "class_means" not in details:
        return None
    names, means = list(details["class_means"]), list(details["class_means"].values())
    preferred = details.get("preferred_class")
    si = details.get("selectivity")
    fig = go.Figure(go.Bar(
        x=names, y=means,
        marker_color=["#B279A2" if n == preferred else "#9ecae1" for n in names],
        hovertemplate="%{x}: mean activation %{y:.4f}<extra></extra>",
    ))
    what = "dead: 0 on every test image" if details.get("dead") else f"selectivity {si:.2f}"
    fig.update_layout(
        title=f"{details['stage']} channel {details['channel']}: mean activation per class ({what})",
        yaxis=dict(title="mean activation (spatial mean, test images)", rangemode="tozero"),
        margin=MARGIN, height=320,
    )
    return fig


def _current_maps(image: str) -> tuple[Entry, dict[str, np.ndarray]]:
    entry = CACHE.entry(image)  # what the network saw and its activations, analysed once per image
    return entry, entry.features


def _map_outputs(x: Entry, features: dict[str, np.ndarray], stage: str, channel: int) -> tuple:
    m = features[stage][channel]
    a = _atlas()
    test_max = None
    if a is not None and ATLAS.matches_weights():
        test_max = float(a.stages[stage].top_values[channel, 0])
    peak = float(m.max())
    if test_max:
        scale = (f"On one colour scale with its top test images (red = {test_max:.3g}, its highest activation on the "
                 f"test set): here it peaks at {peak:.3g}, {peak / test_max:.0%} of that.")
        vmax = test_max
    else:
        scale = f"Colour scale: this map's own maximum ({peak:.3g})." if peak > 0 else "It is 0 everywhere on this image."
        vmax = None
    h, w = m.shape
    note = f"{stage} channel {channel} on the current image ({h}x{w} map, one cell = {STRIDES[stage]}x{STRIDES[stage]} px). {scale}"
    return render.overlay(x.seen, m, vmax=vmax, size=DISPLAY), note


@user_errors
def channel_map(image: str | None, stage: str, channel: float) -> tuple:
    """The chosen channel's map on the current image, on the scale of its top test images when the atlas matches."""
    stage = _check_stage(stage)
    channel = _check_channel(stage, channel)
    if image is None:
        return None, "No image yet: pick one of the test images above or upload your own."
    x, features = _current_maps(image)
    return _map_outputs(x, features, stage, channel)


@user_errors
def image_views(image: str | None, stage: str, channel: float) -> tuple:
    """For the current image: its most active layer4 channels (the shortcut gallery) and the chosen channel's map."""
    if image is None:
        return [], [], None, "No image yet: pick one of the test images above or upload your own."
    stage = _check_stage(stage)
    channel = _check_channel(stage, channel)
    x, features = _current_maps(image)
    top = activations.top_channels(features[SHORTCUT_STAGE], SHORTCUT_CHANNELS)
    vmax = float(top.maps.max()) or None
    shortcut = [(render.overlay(x.seen, m, vmax=vmax, size=ATLAS_THUMB), f"{SHORTCUT_STAGE} ch {int(i)} · mean {float(v):.3g}")
                for i, m, v in zip(top.indices, top.maps, top.means)]
    return (shortcut, [int(i) for i in top.indices], *_map_outputs(x, features, stage, channel))


def follow(image: str | None, n_channels: float, stage: str, channel: float) -> tuple:
    """A new image while the tab is on screen: its feature maps and image views."""
    if image is None:
        return (None,) * N_FEATURE_PLOTS + ([], [], None, "")
    return (*feature_maps(image, n_channels), *image_views(image, stage, channel))


def open_atlas(loaded: bool, stage: str, channel: float) -> tuple:
    """First opening of the tab: the atlas overview and the chosen channel; reopening keeps what is shown."""
    if loaded:
        return (gr.skip(),) * 5
    a = _atlas()
    if a is None:
        return _unavailable(), [], {}, "", True
    return (atlas_overview_markdown(a), *channel_atlas(stage, channel), True)


def fit_channel_js() -> str:
    """The browser's fit of the typed channel to the chosen stage: a whole number in 0..last.

    It runs in the page, before the events that show a channel read their inputs, so no answer of
    the server's can land after a number typed since and put another one in its place (a late
    server-side fit reset a channel typed right after a new stage was picked).
    """
    last = json.dumps({name: n - 1 for name, n in CHANNELS.items()})
    return (f"(stage, channel) => {{ const last = {last}[stage] ?? 0; const c = Math.trunc(Number(channel)) || 0; "
            "return [stage, Math.min(Math.max(c, 0), last)]; }")


def pick_shortcut(channels: list[int], evt: gr.SelectData) -> tuple:
    """A click on one of the current image's layer4 channels: show that channel's atlas entry."""
    if not channels or not isinstance(evt.index, int) or not 0 <= evt.index < len(channels):
        return gr.skip(), gr.skip()
    return SHORTCUT_STAGE, channels[evt.index]


def build(ctx: Ctx) -> None:
    with gr.Tab("Feature maps", id="features") as tab:
        n = gr.Slider(1, 64, value=16, step=1, label="Channels per stage (most active first, by mean activation)")
        gr.Markdown("Each panel is one channel; all panels of a stage share one colour scale. Hover for channel and value.")
        plots = [gr.Plot(label=name, elem_classes=["feature-plot"]) for name in ("stem", *STAGE_NAMES)]

        gr.Markdown("## Channel atlas: what excites each channel, over the whole test set")
        overview = gr.Markdown(elem_id="atlas-overview")
        gr.Markdown(f"**Shortcut:** this image's {SHORTCUT_CHANNELS} most active {SHORTCUT_STAGE} channels. "
                    "Click one to see what else excites it.")
        shortcut = gr.Gallery(label=f"This image's most active {SHORTCUT_STAGE} channels (click one)", columns=SHORTCUT_CHANNELS,
                              rows=1, height=200, object_fit="contain", format="png", allow_preview=False,
                              elem_id="atlas-shortcut")
        shortcut_channels = gr.State([])
        with gr.Row():
            stage = gr.Dropdown(list(FEATURE_NAMES), value=SHORTCUT_STAGE, label="Stage", elem_id="atlas-stage", scale=1)
            # One range for every stage (the widest): the page fits the number to the stage (fit_channel_js).
            channel = gr.Number(value=0, precision=0, minimum=0, maximum=max(CHANNELS.values()) - 1, label="Channel",
                                info=" · ".join(f"{name} 0..{n - 1}" for name, n in CHANNELS.items()),
                                elem_id="atlas-channel", scale=1)
            show = gr.Button("Show channel", variant="primary", elem_id="atlas-show", scale=1)
        note = gr.Markdown(elem_id="atlas-note")
        top = gr.Gallery(label="Its most exciting test images, activation overlaid (caption: true / predicted class)",
                         columns=atlas.TOP_K, rows=1, height=200, object_fit="contain", format="png", allow_preview=True, elem_id="atlas-gallery")
        with gr.Row(equal_height=False):
            bars = gr.Plot(label="Class preference", elem_id="atlas-class-means", scale=3)
            with gr.Column(scale=2):
                current = gr.Image(label="This channel on the current image", interactive=False, format="png",
                                   height=256, elem_id="atlas-current")
                current_note = gr.Markdown(elem_id="atlas-current-note")
        with gr.Accordion("This channel in numbers (what /channel_atlas returns)", open=False):
            details = gr.JSON(label="channel", elem_id="atlas-details")
        loaded = gr.State(False)
    n.release(feature_maps, inputs=[ctx.image, n], outputs=plots, api_name="feature_maps")

    shown = [top, details, note]
    views = [shortcut, shortcut_channels, current, current_note]
    tab.select(open_atlas, inputs=[loaded, stage, channel], outputs=[overview, *shown, loaded], api_name="atlas_open",
               api_visibility="private").then(class_means_figure, inputs=[details], outputs=[bars],
                                               api_name="atlas_class_means", api_visibility="private")
    tab.select(image_views, inputs=[ctx.image, stage, channel], outputs=views, api_name="atlas_image_views",
               api_visibility="private")
    tab.select(feature_maps, inputs=[ctx.image, n], outputs=plots, api_name="feature_maps_open", api_visibility="private")
    ctx.follow("features", follow, inputs=[n, stage, channel], outputs=[*plots, *views])
    # A stage picked, Show pressed or Enter typed: one event each for the atlas entry and the map, so the
    # page's "always_last" answers them in order and the last move's answer is the one left on screen (a
    # stage's own follow-up, answered after a Show pressed since, replaced the channel shown). The number
    # is fitted to the stage in the browser first, and the box shows the fitted number.
    fit = fit_channel_js()
    choose = [show.click, channel.submit, stage.input]
    gr.on(choose, None, inputs=[stage, channel], outputs=[stage, channel], js=fit, queue=False,
          api_visibility="private")
    gr.on(choose, channel_atlas, inputs=[stage, channel], js=fit, outputs=shown, api_name="channel_atlas",
          concurrency_id="atlas", concurrency_limit=1).then(
        class_means_figure, inputs=[details], outputs=[bars], api_name="atlas_bars", api_visibility="private",
        concurrency_id="atlas")
    gr.on(choose, channel_map, inputs=[ctx.image, stage, channel],
          js=f"(image, stage, channel) => [image, ...({fit})(stage, channel)]", outputs=[current, current_note],
          api_name="channel_map", concurrency_id="atlas_map", concurrency_limit=1)
    # A click on one of the image's layer4 channels sets stage and channel (.select: a user's action only), then
    # shows them, in the same queues as the events above.
    chosen = shortcut.select(pick_shortcut, inputs=[shortcut_channels], outputs=[stage, channel], queue=False,
                             api_name="atlas_pick_shortcut", api_visibility="private")
    chosen.then(channel_atlas, inputs=[stage, channel], outputs=shown, api_name="atlas_by_shortcut",
                api_visibility="private", concurrency_id="atlas").then(
        class_means_figure, inputs=[details], outputs=[bars], api_name="atlas_bars_by_shortcut",
        api_visibility="private", concurrency_id="atlas")
    chosen.then(channel_map, inputs=[ctx.image, stage, channel], outputs=[current, current_note],
                api_name="atlas_map_by_shortcut", api_visibility="private", concurrency_id="atlas_map")
