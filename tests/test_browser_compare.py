"""A real browser uploads a second checkpoint in the Compare tab and sees the image through both
models side by side: two top-5s, two columns of four Grad-CAM maps, the block ratios of both. Closing
the page deletes the upload from the server's temporary folder; a bad file is refused in a sentence.

Same Chromium set-up as tests/test_browser.py (a missing browser fails unless ALLOW_NO_BROWSER=1).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_browser import ARTIFACTS, _browser_or_fail, _images_loaded, _wait_plots, browser_session, open_tab
from test_compare import theirs  # noqa: F401  (the fixture: a DDP float16 checkpoint of a random ResNet-50)

from conftest import start_app


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    _browser_or_fail()
    uploads = tmp_path_factory.mktemp("uploads")
    with start_app(tmp_path_factory.mktemp("log"), GRADIO_TEMP_DIR=str(uploads)) as url:
        yield url, uploads


def on_compare_tab(page, sample: int | None = None):
    """From the page just opened: pick a sample (if given), open the Compare tab."""
    from playwright.sync_api import expect

    expect(page.locator("#samples")).to_be_visible(timeout=30_000)
    if sample is not None:
        page.locator("#samples").locator("img").nth(sample).click()
        expect(page.locator("#true-class")).to_contain_text("True class:", timeout=60_000)
    open_tab(page, "Compare")
    expect(page.locator("#compare-note")).to_contain_text("Upload a ResNet-50 checkpoint", timeout=30_000)


def test_upload_a_second_checkpoint_and_see_two_columns_of_maps(app, theirs: Path) -> None:  # noqa: F811
    from playwright.sync_api import expect

    url, uploads = app
    with browser_session() as browser:
        with browser.page(url, failure_png="browser-compare-failure.png") as page:
            on_compare_tab(page, sample=9)  # cat_0.png
            page.locator("#compare-weights input[type=file]").set_input_files(str(theirs))

            # Two columns of four maps, side by side, each under its model's top-5.
            _images_loaded(page.locator("#compare-app-cams img"), 4)
            _images_loaded(page.locator("#compare-yours-cams img"), 4)
            left = page.locator("#compare-app-cams").bounding_box()
            right = page.locator("#compare-yours-cams").bounding_box()
            assert left["x"] + left["width"] <= right["x"] + 1 and abs(left["y"] - right["y"]) < 20
            expect(page.locator("#compare-app-cams")).to_contain_text("layer4 · 4x4")
            for top5 in ("#compare-app-top5", "#compare-yours-top5"):
                expect(page.locator(top5).get_by_text("%").first).to_be_visible()
            _wait_plots(page, "#compare-ratios")
            assert page.locator("#compare-ratios .js-plotly-plot .bars path").count() >= 32  # 16 blocks x 2 models
            expect(page.locator("#compare-note")).to_contain_text("ddp-resnet50.pt")
            assert list(uploads.rglob(theirs.name)), "the upload is in the server's temporary folder while in use"

            # One target class for both models, chosen by the user.
            page.get_by_label("Explain class (both models").click()
            page.get_by_role("option", name="dog", exact=True).click()
            expect(page.locator("#compare-note")).to_contain_text("explain dog (the class you chose)", timeout=60_000)
            _images_loaded(page.locator("#compare-yours-cams img"), 4)
            page.screenshot(path=str(ARTIFACTS / "browser-compare.png"), full_page=True)
        page.close()
        # Closing the page ends the session: its model is freed and the uploaded file deleted.
        deadline = time.time() + 60
        while list(uploads.rglob(theirs.name)) and time.time() < deadline:
            time.sleep(0.5)
        assert not list(uploads.rglob(theirs.name)), "the upload outlived its session"

        # A file that is no checkpoint: one sentence, and the tab keeps working.
        empty = ARTIFACTS / "empty.pt"
        empty.write_bytes(b"")
        with browser.page(url, failure_png="browser-compare-failure.png") as page:
            on_compare_tab(page)
            page.locator("#compare-weights input[type=file]").set_input_files(str(empty))
            expect(page.get_by_text("empty.pt is empty (0 bytes).").first).to_be_visible(timeout=30_000)
            expect(page.locator("#compare-note")).to_contain_text("Upload a ResNet-50 checkpoint")
            page.screenshot(path=str(ARTIFACTS / "browser-compare-refused.png"))
