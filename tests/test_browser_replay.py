"""A real browser replays the training: open "How it learned", see every chart and the eight
Grad-CAM maps, move the slider and see the maps change, play the replay, follow a new probe
image from the examples, and read why an image of one's own has no replay.

Uses the helpers of test_browser.py (Chromium through Playwright; a missing browser fails
unless ALLOW_NO_BROWSER=1) and a private assets folder holding a synthetic replay of the
shipped samples (the shipped CPU weights have none yet).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_browser import ARTIFACTS, _browser_or_fail, _images_loaded, _wait_plots, browser_page, open_tab
from test_replay import assets_with

from conftest import start_app
from insight.replay import REPLAY_FILE, load_replay

PLOTS = ("#replay-probs", "#replay-ratios", "#replay-accuracy", "#replay-confusion", "#replay-gamma")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app's URL and the replay it serves."""
    _browser_or_fail()
    assets = assets_with(tmp_path_factory.mktemp("assets"))
    with start_app(tmp_path_factory.mktemp("log"), EXPLORER_ASSETS_DIR=str(assets)) as url:
        yield url, load_replay(assets / REPLAY_FILE)


def _map_sources(page) -> list[str]:
    images = page.locator("#replay-cams img")
    _images_loaded(images, 8)
    return [images.nth(i).get_attribute("src") for i in range(8)]


def _maps_other_than(page, old: list[str]) -> list[str]:
    """Wait until the eight maps are new ones and all loaded; return their sources."""
    page.wait_for_function(
        """old => {
            const imgs = [...document.querySelectorAll('#replay-cams img')];
            return imgs.length === 8 && imgs.every(i => i.complete && i.naturalWidth > 0)
                && imgs.map(i => i.getAttribute('src')).join() !== old;
        }""",
        arg=",".join(old), timeout=30_000,
    )
    return _map_sources(page)


def _settled(locator, page) -> str:
    """The text once it stops changing (a timer tick may still be on its way when Pause is pressed)."""
    before = locator.inner_text()
    while True:
        page.wait_for_timeout(2_500)  # over two frames of the replay
        now = locator.inner_text()
        if now == before:
            return now
        before = now


def test_scrub_play_and_follow_the_replay(app, tmp_path):
    from playwright.sync_api import expect

    app_url, replay = app
    n = len(replay)
    own = tmp_path / "my_own.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(own)
    with browser_page(app_url, failure_png="browser-replay-failure.png") as page:
        expect(page.locator("#samples")).to_be_visible(timeout=30_000)
        expect(page.locator("#true-class")).to_contain_text("True class", timeout=60_000)
        open_tab(page, "How it learned")

        # Opened on the last snapshot: the model as it is served, for the page's opening example.
        when = page.locator("#replay-when")
        expect(when).to_contain_text(f"Snapshot {n} of {n}: {replay.label(n - 1)}", timeout=30_000)
        expect(when).to_contain_text("airplane_0.png")
        for plot in PLOTS:
            _wait_plots(page, plot)
        expect(page.locator("#replay-confusion")).to_contain_text(f"after epoch {replay.eval_epoch[-1]}")
        at_the_end = _map_sources(page)
        expect(page.locator("#replay-cams").get_by_text("layer4 · true airplane").first).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "browser-replay.png"), full_page=True)

        # Back to the initialisation: other maps, and no evaluation yet.
        box = page.locator("#replay-slider input[type=number]")
        box.fill("0")
        expect(when).to_contain_text(f"Snapshot 1 of {n}: initialisation", timeout=30_000)
        expect(page.locator("#replay-confusion")).to_contain_text("No evaluation yet", timeout=30_000)
        at_the_start = _maps_other_than(page, at_the_end)
        page.screenshot(path=str(ARTIFACTS / "browser-replay-start.png"), full_page=True)

        # Play walks forward one snapshot at a time; Pause stops it.
        page.locator("#replay-play").click()
        expect(when).to_contain_text(f"Snapshot 3 of {n}", timeout=30_000)
        page.locator("#replay-play").click()
        expect(page.locator("#replay-play")).to_have_text("▶ Play", timeout=10_000)
        stopped_at = int(_settled(when, page).split()[1])
        assert 3 <= stopped_at < n, "paused before the end"
        expect(page.locator("#replay-slider input[type=number]")).to_have_value(str(stopped_at - 1))
        _maps_other_than(page, at_the_start)

        # A probe image chosen above is followed here.
        page.locator("#samples").locator("img").nth(24).click()  # ship_0.png
        expect(when).to_contain_text("ship_0.png", timeout=60_000)
        expect(page.locator("#replay-note")).to_have_text("", timeout=10_000)

        # An image of one's own has no replay: the tab says so and keeps showing a probe.
        page.locator("#input-image button[aria-label='Remove Image']").first.click()
        expect(page.locator("#replay-note")).to_contain_text("No image chosen", timeout=60_000)
        page.locator("#input-image input[type=file]").set_input_files(str(own))
        expect(page.locator("#replay-note")).to_contain_text("not one of the 30 probe images", timeout=60_000)
        expect(when).to_contain_text("ship_0.png")
        page.screenshot(path=str(ARTIFACTS / "browser-replay-own-image.png"), full_page=True)
