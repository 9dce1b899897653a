"""A real browser uses the channel atlas: pick a stage and a channel and see the
test images that excite it most, its class preference and its map on the
current image; then follow the shortcut from the image's most active layer4
channel to what else excites it.

Runs on the shipped assets (the session's ``server``), with the helpers of
tests/test_browser.py. Which channel to pick, and what its captions must say,
comes from the shipped atlas file itself, so the test holds for any weights.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from test_browser import ARTIFACTS, _browser_or_fail, _images_loaded, _wait_plots, browser_page, open_tab

from insight import atlas
from resnet.constants import CLASSES

ROOT = Path(__file__).resolve().parent.parent
STAGE = "layer3"


def _live_channel(shipped: atlas.Atlas) -> int:
    """A layer3 channel that some test image excites, away from the default channel 0."""
    live = np.flatnonzero(~shipped.stages[STAGE].dead)
    assert live.size, "every layer3 channel of the shipped weights is dead"
    return int(live[len(live) // 2])


def _shown(locator, n: int) -> None:
    """n images, each scrolled into view (a gallery loads its images lazily) and decoded."""
    from playwright.sync_api import expect

    expect(locator).to_have_count(n, timeout=60_000)
    for i in range(n):
        locator.nth(i).scroll_into_view_if_needed()
    _images_loaded(locator, n)


def _cat_on_the_feature_maps_tab(page) -> None:
    """A user clicks the sample cat_0.png, waits for its prediction and opens the Feature maps tab."""
    from playwright.sync_api import expect

    expect(page.locator("#samples")).to_be_visible(timeout=30_000)
    page.locator("#samples img").nth(9).click()  # cat_0.png
    expect(page.locator("#true-class")).to_contain_text("True class: cat", timeout=60_000)
    open_tab(page, "Feature maps")


def test_pick_a_channel_and_see_its_top_test_images(server):
    from playwright.sync_api import expect

    _browser_or_fail()
    shipped = atlas.load_atlas(ROOT / "assets" / atlas.ATLAS_FILE)
    channel = _live_channel(shipped)
    stage = shipped.stages[STAGE]
    n_top = int((stage.top_values[channel] > 0).sum())
    first = int(stage.top_rows[channel, 0])

    with browser_page(server, failure_png="browser-atlas-failure.png") as page:
        _cat_on_the_feature_maps_tab(page)
        expect(page.locator("#atlas-overview")).to_contain_text("dead", timeout=60_000)
        expect(page.locator("#atlas-overview")).to_contain_text(f"{shipped.n_images:,} images of the CIFAR-10")
        # The shortcut: the current image's most active layer4 channels, as overlays.
        _shown(page.locator("#atlas-shortcut img"), 8)

        # Pick a stage and a channel, then show it.
        page.locator("#atlas-stage input").click()
        page.get_by_role("option", name=STAGE, exact=True).click()
        # A new stage keeps channel 0 (it fits every stage) and shows it, as a user sees before typing. The
        # input already read 0, so only the note tells that the stage's answers are in: typed sooner, on a
        # loaded machine, the number was reset to 0 by the stage's channel fit answering after it.
        expect(page.locator("#atlas-channel input")).to_have_value("0", timeout=10_000)
        expect(page.locator("#atlas-note")).to_contain_text(re.compile(rf"{STAGE} channel 0\b"), timeout=60_000)
        page.locator("#atlas-channel input").fill(str(channel))
        page.locator("#atlas-show").click()
        expect(page.locator("#atlas-note")).to_contain_text(f"{STAGE} channel {channel}", timeout=60_000)
        _shown(page.locator("#atlas-gallery img"), n_top)
        caption = page.locator("#atlas-gallery img").first.get_attribute("alt")
        assert caption.startswith(f"{CLASSES[int(shipped.labels[first])]} / ") and f" · #{first} · " in caption
        _wait_plots(page, "#atlas-class-means")
        expect(page.locator("#atlas-class-means")).to_contain_text(f"{STAGE} channel {channel}")
        expect(page.locator("#atlas-current img")).to_be_visible(timeout=30_000)
        expect(page.locator("#atlas-current-note")).to_contain_text(f"{STAGE} channel {channel} on the current image")
        page.screenshot(path=str(ARTIFACTS / "browser-atlas.png"), full_page=True)

        # The shortcut: click the image's most active layer4 channel, see what else excites it.
        caption = page.locator("#atlas-shortcut img").first.get_attribute("alt")  # the item's caption
        picked = int(caption.split("layer4 ch ")[1].split()[0])
        page.locator("#atlas-shortcut img").first.click()
        expect(page.locator("#atlas-note")).to_contain_text(f"layer4 channel {picked}", timeout=60_000)
        expect(page.locator("#atlas-channel input")).to_have_value(str(picked))
        n_picked = int((shipped.stages["layer4"].top_values[picked] > 0).sum())
        _shown(page.locator("#atlas-gallery img"), n_picked)
        page.screenshot(path=str(ARTIFACTS / "browser-atlas-shortcut.png"), full_page=True)


def test_a_channel_typed_right_after_picking_a_stage_is_the_one_shown(server):
    """A user picks a stage and at once types a channel and presses Show, before the stage's own
    answer is in. The stage's answer is held back here until the Show has been pressed: when it
    lands, the page still ends on the typed channel (the box, the note and the map alike). Before,
    a late fit of the channel to the new stage reset the typed number, and the stage's late atlas
    answer replaced the Show's."""
    import json
    import urllib.request

    from playwright.sync_api import expect

    _browser_or_fail()
    shipped = atlas.load_atlas(ROOT / "assets" / atlas.ATLAS_FILE)
    channel = _live_channel(shipped)
    config = json.loads(urllib.request.urlopen(server + "config", timeout=30).read())
    stage_id = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "atlas-stage")
    # Every request a stage pick sends to the server, whichever event it belongs to.
    on_stage = {i for i, d in enumerate(config["dependencies"]) if [stage_id, "input"] in [list(t) for t in d["targets"]]}
    assert on_stage, "picking a stage shows its channel"
    held: list = []
    released: list = []

    def hold_the_stage_answers(route) -> None:
        if not released and json.loads(route.request.post_data or "{}").get("fn_index") in on_stage:
            held.append(route)
        else:
            route.continue_()

    with browser_page(server, failure_png="browser-atlas-race-failure.png") as page:
        _cat_on_the_feature_maps_tab(page)
        expect(page.locator("#atlas-note")).to_contain_text("layer4 channel 0", timeout=60_000)
        _shown(page.locator("#atlas-shortcut img"), 8)

        page.route("**/queue/join*", hold_the_stage_answers)
        page.route("**/run/predict*", hold_the_stage_answers)
        page.locator("#atlas-stage input").click()
        page.get_by_role("option", name=STAGE, exact=True).click()
        page.locator("#atlas-channel input").fill(str(channel))
        page.locator("#atlas-show").click()
        page.wait_for_timeout(2000)  # time enough for the Show to be answered, if it is sent now
        assert held, "the stage's answers were not sent"
        released.append(True)
        for route in held:
            route.continue_()
        expect(page.locator("#atlas-note")).to_contain_text(f"{STAGE} channel {channel}", timeout=60_000)
        page.wait_for_function("() => !document.querySelectorAll('.pending, .eta-bar, .generating').length",
                               timeout=60_000)
        page.wait_for_timeout(2000)  # anything still on its way has landed
        expect(page.locator("#atlas-channel input")).to_have_value(str(channel))
        expect(page.locator("#atlas-note")).to_contain_text(f"{STAGE} channel {channel}")
        expect(page.locator("#atlas-current-note")).to_contain_text(f"{STAGE} channel {channel} on the current image")
        _shown(page.locator("#atlas-gallery img"), int((shipped.stages[STAGE].top_values[channel] > 0).sum()))
