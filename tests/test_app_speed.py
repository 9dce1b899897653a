"""What makes a click cheap: slider changes recompute nothing, hidden views compute nothing,
and a new image costs two events (the analysis and one follow-up for every tab), not one per tab.

In-process on the shipped model for the handlers; the server and a real Chromium for the events.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "assets" / "samples").glob("*.png"))


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """One app server on the shipped assets for this module's browser tests."""
    from test_browser import _browser_or_fail

    from conftest import start_app

    _browser_or_fail()
    with start_app(tmp_path_factory.mktemp("speed-app")) as url:
        yield url


@pytest.fixture(scope="module")
def explorer_modules():
    from explorer import context
    from explorer.tabs import blocks, features, gradcam

    return context, blocks, features, gradcam


def test_opacity_and_colour_scale_redraw_from_the_cache(explorer_modules, monkeypatch) -> None:
    context, _, _, gradcam = explorer_modules
    sample = str(SAMPLES[4])
    gallery, note, raw = gradcam.gradcam(sample, "cat", 0.5, "per map")
    entry = context.CACHE.entry(sample)

    def no_network(*args, **kwargs):
        raise AssertionError("a view change ran the network")

    monkeypatch.setattr(gradcam, "contrast_map", no_network)
    monkeypatch.setattr(context.CACHE, "_compute", no_network)
    monkeypatch.setattr(context.CACHE, "make_pass", no_network)
    redrawn, note2 = gradcam.gradcam_view(sample, "cat", 0.8, "shared")
    assert len(redrawn) == 4 and "Grad-CAM for **cat**" in note2 and "largest value of all four maps" in note2
    assert 3 in entry.cams  # cat's maps were kept


def test_a_change_of_class_after_the_analysis_runs_no_network(explorer_modules, monkeypatch) -> None:
    context, _, _, gradcam = explorer_modules
    sample = str(SAMPLES[5])
    gradcam.strip(context.CACHE.entry(sample), "predicted class", 0.5, "per map")  # the page's analysis
    assert len(context.CACHE.entry(sample).cams) == 10  # every class's maps, ahead of a change

    def no_network(*args, **kwargs):
        raise AssertionError("a change of class ran the network")

    monkeypatch.setattr(context.CACHE, "_compute", no_network)
    monkeypatch.setattr(context.CACHE, "make_pass", no_network)
    for name in ("ship", "frog", "truck"):
        overlays, note = gradcam.gradcam_view(sample, name, 0.5, "per map")
        assert len(overlays) == 4 and f"Grad-CAM for **{name}**" in note


def test_raw_values_are_sent_only_while_their_panel_is_open(explorer_modules) -> None:
    import gradio as gr

    _, _, _, gradcam = explorer_modules
    sample = str(SAMPLES[5])
    assert isinstance(gradcam.raw_maps(sample, "ship", False), type(gr.skip()))  # the panel is closed
    raw = gradcam.raw_maps(sample, "ship", True)
    assert raw["target"] == "ship" and [len(raw["maps"][s]) for s in ("layer1", "layer4")] == [32, 4]


def _page_with_followers(explorer_modules):
    """A Ctx with the real followers of three tabs, wired as the page wires them."""
    import gradio as gr

    from explorer.ui import Ctx

    _, blocks, features, gradcam = explorer_modules
    with gr.Blocks():
        ctx = Ctx(image=gr.Image(), analysed=gr.Image(), open_tab=gr.Textbox())
        ctx.follow("blocks", blocks.block_anatomy, inputs=[gr.Dropdown(), gr.Radio(), gr.Slider()],
                   outputs=[gr.Plot(), gr.Plot()])
        ctx.follow("features", features.follow, inputs=[gr.Slider(), gr.Dropdown(), gr.Number()],
                   outputs=[gr.Plot() for _ in range(features.N_FEATURE_PLOTS)] + [gr.Gallery(), gr.State(),
                                                                                  gr.Image(), gr.Markdown()])
        ctx.follow("gradcam", gradcam.contrast, inputs=[gr.Dropdown(), gr.Radio(), gr.Slider()],
                   outputs=[gr.Image(), gr.Markdown()])
    return ctx


def test_hidden_tabs_compute_nothing_for_a_new_image_and_send_nothing(explorer_modules) -> None:
    """Hidden tabs are neither computed nor cleared: opening one draws it for the image then
    shown, and a clear sent by this event could land after that drawing and wipe it."""
    import gradio as gr

    context = explorer_modules[0]
    ctx = _page_with_followers(explorer_modules)
    sample = str(SAMPLES[7])
    settings = ("layer1.0", "channel mean", 0, 16, "layer4", 0, "predicted class", "Occlusion", 0.5)
    out = ctx.follow_all(sample, "robustness", *settings)
    assert len(out) == 2 + (5 + 4) + 2 and all(v == gr.skip() for v in out)
    entry = context.CACHE.entry(sample)
    assert not entry.extras  # no anatomy, no contrast map was computed
    # On screen, the same followers do compute (that tab's only), from the image's cached analysis.
    parts, ratios, *rest = ctx.follow_all(sample, "blocks", *settings)
    assert parts is not None and ratios is not None and all(v == gr.skip() for v in rest)
    assert list(entry.extras) == [("anatomy", "layer1.0", None)]


def test_a_new_image_costs_the_analysis_and_one_follow_up(app_url) -> None:
    from test_browser import browser_page

    from playwright.sync_api import expect

    with browser_page(app_url, failure_png="browser-speed-failure.png") as page:
        # The page opens on a worked example, analysed without a click.
        expect(page.locator("#true-class")).to_contain_text(SAMPLES[0].name, timeout=60_000)
        expect(page.locator("#gradcam-strip canvas")).to_have_count(4, timeout=30_000)
        names = {i: d.get("api_name") for i, d in enumerate(page.evaluate("() => window.gradio_config")["dependencies"])}
        page.wait_for_timeout(1500)
        events: list[str] = []

        def on_request(request) -> None:
            if "/queue/join" in request.url and request.post_data:
                events.append(names.get(json.loads(request.post_data).get("fn_index")))

        page.on("request", on_request)
        page.locator("#samples img").nth(9).click()  # cat_0.png
        expect(page.locator("#true-class")).to_contain_text("cat_0.png", timeout=60_000)
        page.wait_for_timeout(2000)
        assert events == ["analyze_view", "follow"], events


STRIP = "#gradcam-strip .camstrip"


def _strip_pixels(page) -> list[np.ndarray]:
    """The four canvases' RGB pixels."""
    flat = page.evaluate(f"""() => [...document.querySelectorAll('{STRIP} canvas')].map(c =>
        Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data))""")
    return [np.asarray(v, dtype=np.uint8).reshape(256, 256, 4)[..., :3] for v in flat]


def test_class_opacity_and_scale_are_drawn_in_the_page_as_the_server_draws_them(explorer_modules, app_url) -> None:
    """Once an image is analysed, a new class, opacity or colour scale needs no answer from the
    server: the page draws the overlays itself, pixel for pixel as ``insight.render.overlay``."""
    from test_browser import browser_page

    from insight import render
    from playwright.sync_api import expect

    context, _, _, _ = explorer_modules
    cat = next(p for p in SAMPLES if p.name == "cat_0.png")
    entry = context.CACHE.entry(str(cat))
    context.CACHE.every_class(entry)
    with browser_page(app_url, failure_png="browser-strip-failure.png") as page:
        page.locator("#samples img").nth(9).click()  # cat_0.png
        expect(page.locator(STRIP)).to_have_attribute("data-key", entry.key, timeout=60_000)

        # From here the server's answers are held back (the requests hang): the strip still follows
        # every control. (An aborted request would make Gradio's page stop sending events.)
        held: list = []
        page.route("**/gradio_api/**", lambda route: held.append(route))
        page.locator("#gradcam-target input").click()
        page.get_by_role("option", name="truck", exact=True).click()
        page.locator("#gradcam-scale").get_by_label("shared").check()
        box = page.locator("#gradcam-opacity input[type=number]")
        box.fill("0.7")
        box.blur()
        expect(page.locator(STRIP)).to_have_attribute("data-view", "truck|0.7|shared", timeout=10_000)
        expect(page.locator(STRIP)).to_contain_text("Grad-CAM for truck")
        drawn = _strip_pixels(page)
        assert held, "the changes did send their other requests (the raw values, the contrast map)"
        page.unroute("**/gradio_api/**")  # lets the held requests through

    truck = context.CLASSES.index("truck")
    cams = entry.cams[truck]
    shared = max(float(m.max()) for m in cams.values())
    for got, stage in zip(drawn, ("layer1", "layer2", "layer3", "layer4")):
        want = render.overlay(entry.seen, cams[stage], opacity=0.7, vmax=shared, size=256)
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff.max() <= 2 and (diff > 0).mean() < 0.01, (stage, diff.max(), (diff > 0).mean())


def test_overlays_are_encoded_once_into_gradios_cache_and_served_from_there(explorer_modules) -> None:
    """The Grad-CAM overlays come to the gallery as WebP files already in Gradio's cache (Gradio's own
    encoder is 3.5x slower), named by content: the same overlay is one file, written once."""
    import numpy as np
    from gradio.utils import get_upload_folder
    from PIL import Image

    context, _, _, gradcam = explorer_modules
    image = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    first = context.webp_in_cache(image)
    assert context.webp_in_cache(image.copy()) == first
    assert Path(first).resolve().is_relative_to(Path(get_upload_folder()).resolve())
    with Image.open(first) as im:
        assert im.format == "WEBP" and im.size == (256, 256)
    other = image.copy()
    other[0, 0] ^= 255
    assert context.webp_in_cache(other) != first
    # The same view twice names the same files: the browser holds them already.
    sample = str(SAMPLES[4])
    first_view, _ = gradcam.gradcam_view(sample, "dog", 0.65, "shared")
    gradcam.gradcam_view(sample, "dog", 0.3, "shared")
    assert gradcam.gradcam_view(sample, "dog", 0.65, "shared")[0] == first_view


def test_the_opacity_slider_redraws_the_contrast_map_without_computing_it(explorer_modules, monkeypatch) -> None:
    import gradio as gr

    context, _, _, gradcam = explorer_modules
    sample = str(SAMPLES[8])
    assert gradcam.contrast_view(sample, "cat", "Occlusion", 0.5) == (gr.skip(), gr.skip())  # not computed yet
    image, note = gradcam.contrast(sample, "cat", "Occlusion", 0.5)

    def no_network(*args, **kwargs):
        raise AssertionError("the slider recomputed the contrast map")

    monkeypatch.setattr(gradcam, "contrast_map", no_network)
    redrawn, same_note = gradcam.contrast_view(sample, "cat", "Occlusion", 0.9)
    assert redrawn != image and same_note == note
