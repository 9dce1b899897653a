"""A real browser drives the explorer: click a sample, see a prediction and the
Grad-CAM images, open every tab and see its Plotly charts drawn; probe the
image's robustness, run the saliency sanity check, browse the test set's
mistakes down to one image's two Grad-CAMs, and read the calibration.

Runs Debian's headless Chromium through Playwright. A missing browser is a
failure, not a skip (CI must run this), unless ALLOW_NO_BROWSER=1.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from conftest import start_app, write_assets
from insight import residuals
from insight.testset import EVALUATION_FILE, GALLERY_FILE

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
SAMPLE_DIR = ROOT / "assets" / "samples"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _browser_or_fail() -> None:
    missing = not Path(CHROMIUM).is_file()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = True
    if missing:
        if os.environ.get("ALLOW_NO_BROWSER") == "1":
            pytest.skip(f"no Chromium at {CHROMIUM} or no playwright; ALLOW_NO_BROWSER=1 so skipping")
        pytest.fail(
            f"The browser test needs Chromium at {CHROMIUM} and the playwright package: "
            "run `apt-get install -y chromium` and `pip install playwright` "
            "(or set ALLOW_NO_BROWSER=1 to skip deliberately)."
        )


class BrowserSession:
    """One headless Chromium; every page it opens adds its JavaScript errors to ``errors``."""

    def __init__(self, browser) -> None:
        self.browser = browser
        self.errors: list[str] = []

    @contextmanager
    def page(self, url: str, failure_png: str = "browser-failure.png",
             before: Callable[[Any], None] | None = None) -> Iterator:
        """A new 1400x1000 page on ``url``; whatever fails in the block leaves a full-page screenshot in
        ARTIFACTS/``failure_png``. The page stays open: the browser's closing ends it. ``before(page)``
        runs before the page is opened (to route its requests from the first one)."""
        page = self.browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        try:
            if before is not None:
                before(page)
            page.goto(url, wait_until="domcontentloaded")
            yield page
        except Exception:
            page.screenshot(path=str(ARTIFACTS / failure_png), full_page=True)
            raise


@contextmanager
def browser_session() -> Iterator[BrowserSession]:
    """Chromium through Playwright, closed after the block; then no page may have had a JavaScript error."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        session = BrowserSession(p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True))
        try:
            yield session
        finally:
            session.browser.close()
    assert not session.errors, f"JavaScript errors on the page: {session.errors}"


@contextmanager
def browser_page(url: str, failure_png: str = "browser-failure.png",
                 before: Callable[[Any], None] | None = None) -> Iterator:
    """One page on ``url`` in its own browser (see ``browser_session`` and ``BrowserSession.page``)."""
    with browser_session() as session, session.page(url, failure_png, before) as page:
        yield page


def _fake_history(epochs: int = 6) -> dict:
    rows = []
    for e in range(1, epochs + 1):
        rows.append(
            {
                "epoch": e, "train_loss": 2.0 / e, "train_acc": 0.3 + 0.1 * e, "test_loss": 2.1 / e,
                "test_acc": 0.25 + 0.1 * e, "lr": 0.1 * (1 - e / (epochs + 1)), "epoch_seconds": 10.0 + e,
                "images_per_second": 5000.0, "resolution": 32,
            }
        )
    return {"config": {"epochs": epochs}, "epochs": rows}


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    _browser_or_fail()
    # A private assets folder: the shipped weights, samples and test-set files,
    # plus a synthetic history.json so the training chart is exercised whether
    # or not the real one has been exported yet. Without a shipped evaluation
    # the test-set tabs get a small synthetic one.
    assets = tmp_path_factory.mktemp("assets")
    for name in ("resnet50_cifar10.safetensors", "model_card.json", EVALUATION_FILE, GALLERY_FILE,
                 residuals.LESIONS_FILE, residuals.TWIN_FILE):
        if (ROOT / "assets" / name).exists():
            (assets / name).symlink_to(ROOT / "assets" / name)
    if not (assets / EVALUATION_FILE).exists() or not (assets / GALLERY_FILE).exists():
        for name in (EVALUATION_FILE, GALLERY_FILE):
            (assets / name).unlink(missing_ok=True)
        write_assets(assets)
    shutil.copytree(ROOT / "assets" / "samples", assets / "samples")
    (assets / "history.json").write_text(json.dumps(_fake_history()))
    with start_app(tmp_path_factory.mktemp("log"), EXPLORER_ASSETS_DIR=str(assets)) as url:
        yield url


def open_tab(page, name: str) -> None:
    """Click a tab, from the "More tabs" menu when the tab bar has no room left for it (narrow windows)."""
    tab = page.get_by_role("tab", name=name, exact=True)
    for _ in range(20):
        if tab.count() and tab.is_visible():
            tab.click()
            return
        more = page.get_by_label("More tabs")
        if more.is_visible():
            more.click()
            item = page.locator(".overflow-dropdown button", has_text=name)
            if item.is_visible():
                item.click()
                return
        page.wait_for_timeout(500)
    raise AssertionError(f"no tab named {name!r}, neither in the tab bar nor under More tabs")


def _plotly_count(page, selector: str) -> int:
    return page.locator(f"{selector} .js-plotly-plot svg.main-svg").count()


def test_click_sample_then_every_tab_renders(app_url):
    from playwright.sync_api import expect

    with browser_page(app_url) as page:
        samples = page.locator("#samples")
        expect(samples).to_be_visible(timeout=30_000)
        # Samples are in class order, three per class: the 10th is cat_0.png.
        samples.locator("img").nth(9).click()

        # The prediction: gr.Label shows the top-5 class names.
        prediction = page.locator("#prediction")
        expect(prediction.get_by_text("%").first).to_be_visible(timeout=60_000)
        expect(page.locator("#true-class")).to_contain_text("True class: cat", timeout=30_000)
        # The 32x32 image the model saw and the four Grad-CAM overlays, drawn in the page.
        expect(page.locator("#seen-image img")).to_be_visible(timeout=30_000)
        expect(page.locator("#gradcam-strip canvas")).to_have_count(4, timeout=60_000)
        expect(page.locator("#gradcam-strip")).to_contain_text("layer4 · 4x4")

        # Another class: its maps, then its raw values once their panel is opened.
        page.locator("#gradcam-target input").click()
        page.get_by_role("option", name="ship", exact=True).click()
        expect(page.get_by_text("Grad-CAM for ship").first).to_be_visible(timeout=30_000)
        page.get_by_text("Raw Grad-CAM values").click()
        expect(page.locator("#gradcam-raw").get_by_text("ship").first).to_be_visible(timeout=30_000)

        open_tab(page, "Feature maps")
        page.wait_for_function(
            "() => document.querySelectorAll('.feature-plot .js-plotly-plot svg.main-svg').length >= 5",
            timeout=60_000,
        )

        page.screenshot(path=str(ARTIFACTS / "browser-features.png"), full_page=True)
        open_tab(page, "Residual blocks")
        page.wait_for_function(
            "() => document.querySelectorAll('.anatomy-plot .js-plotly-plot svg.main-svg').length >= 2",
            timeout=60_000,
        )
        assert page.locator(".anatomy-plot .js-plotly-plot .bars path").count() >= 16  # one bar per block

        page.screenshot(path=str(ARTIFACTS / "browser-blocks.png"), full_page=True)
        open_tab(page, "Why residuals")
        plots = ("#twin-plot", "#flow-plot", "#lesion-study-plot", "#lesion-plot")
        page.wait_for_function(
            f"() => {list(plots)}.every(s => document.querySelector(s + ' .js-plotly-plot svg.main-svg'))",
            timeout=60_000,
        )
        expect(page.locator("#flow-text")).to_contain_text("steadiest")
        expect(page.locator("#lesion-text")).to_contain_text("Without the residual branch of layer1.0")
        page.screenshot(path=str(ARTIFACTS / "browser-residuals.png"), full_page=True)
        open_tab(page, "Training curves")
        page.wait_for_function(
            "() => document.querySelectorAll('#training-plot .js-plotly-plot svg.main-svg').length >= 1",
            timeout=30_000,
        )
        expect(page.locator("#training-plot").get_by_text("seed notebook 75.6%")).to_be_visible()

        page.screenshot(path=str(ARTIFACTS / "browser-training.png"), full_page=True)
        open_tab(page, "The model")
        expect(page.locator("#architecture").get_by_text("layer4").first).to_be_visible(timeout=10_000)
        expect(page.locator("#model-card").get_by_text("Data set")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "browser-model.png"), full_page=True)

        _insight_tabs(page)

        open_tab(page, "Grad-CAM")  # drawn for the image chosen from another tab (frog_0.png)
        expect(page.locator("#gradcam-strip canvas")).to_have_count(4)
        expect(page.locator("#gradcam-strip")).to_contain_text("Grad-CAM for ship")  # the class chosen above
        page.screenshot(path=str(ARTIFACTS / "browser.png"), full_page=True)

        # A bad upload: the user reads why, and the page keeps working.
        page.locator("#input-image button[aria-label='Remove Image']").first.click()
        bad = ARTIFACTS / "not-an-image.png"
        bad.write_bytes(b"this is text, not pixels\n" * 10)
        page.locator("#input-image input[type=file]").set_input_files(str(bad))
        expect(page.get_by_text("not an image we can read").first).to_be_visible(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "browser-bad-upload.png"))
        page.locator("#input-image button[aria-label='Remove Image']").first.click()
        page.locator("#input-image input[type=file]").set_input_files(str(SAMPLE_DIR / "ship_0.png"))
        expect(page.locator("#true-class")).to_contain_text("True class: ship", timeout=60_000)


def test_a_sample_clicked_before_the_opening_example_arrives_is_what_the_page_shows(app_url):
    """The page opens on a worked example, analysed as it loads. A sample clicked before that
    answer arrives is what the page ends on: the late opening answer replaces neither the panel
    on top, nor the Grad-CAM strip, nor the tab's follow-up (the contrast map)."""
    import hashlib
    import re
    import urllib.request

    from playwright.sync_api import expect

    config = json.loads(urllib.request.urlopen(app_url + "config", timeout=30).read())
    truth_id = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "true-class")
    opening = {i for i, d in enumerate(config["dependencies"])
               if any(event == "load" for _, event in d["targets"]) and truth_id in d["outputs"]}
    assert opening, "the page analyses an example as it opens"
    held: list = []

    def hold_the_opening_analysis(route) -> None:
        if not held and json.loads(route.request.post_data or "{}").get("fn_index") in opening:
            held.append(route)
        else:
            route.continue_()

    def before(page) -> None:
        page.route("**/queue/join*", hold_the_opening_analysis)

    cat = hashlib.sha256((ROOT / "assets" / "samples" / "cat_0.png").read_bytes()).hexdigest()
    with browser_page(app_url, failure_png="browser-opening-race-failure.png", before=before) as page:
        expect(page.locator("#samples img").nth(9)).to_be_visible(timeout=30_000)
        for _ in range(300):
            if held:
                break
            page.wait_for_timeout(100)
        assert held, "the opening example's analysis was not sent"
        page.locator("#samples img").nth(9).click()  # cat_0.png
        page.wait_for_timeout(3000)  # time enough to answer the click, if it is sent now
        # Every text the panel shows from now on: the assertions below wait for the held answer to land
        # (it names the opening sample, not cat_0.png), or they could pass before it replaced anything.
        page.evaluate("""() => { const panel = document.querySelector('#true-class'); window.panel = [];
            new MutationObserver(() => window.panel.push(panel.innerText))
                .observe(panel, {subtree: true, childList: true, characterData: true}); }""")
        held.pop().continue_()  # then the opening example's answer
        page.unroute("**/queue/join*")
        page.wait_for_function("() => window.panel.some(t => t.includes('.png') && !t.includes('cat_0.png'))",
                               timeout=60_000)
        strip = page.locator("#gradcam-strip .camstrip")
        expect(strip).to_have_attribute("data-key", cat, timeout=60_000)
        page.wait_for_function("() => !document.querySelectorAll('.pending, .eta-bar, .generating').length",
                               timeout=60_000)
        page.wait_for_timeout(2000)  # anything still on its way has landed
        expect(page.locator("#true-class")).to_contain_text("cat_0.png")
        expect(strip).to_have_attribute("data-key", cat)
        predicted = re.search(r"Grad-CAM for (\w+) \(p = [0-9.]+\); the predicted class", strip.inner_text())
        assert predicted, strip.inner_text()
        expect(page.locator("#contrast-note")).to_contain_text(f"Integrated Gradients for {predicted[1]}:",
                                                               timeout=60_000)


def _wait_plots(page, selector: str, n: int = 1, timeout: int = 30_000) -> None:
    page.wait_for_function(
        f"() => document.querySelectorAll('{selector} .js-plotly-plot svg.main-svg').length >= {n}", timeout=timeout
    )


def _images_loaded(locator, n: int) -> None:
    from playwright.sync_api import expect

    expect(locator).to_have_count(n, timeout=30_000)
    for i in range(n):
        # The same patience as the count: each image is one more request to a server that shares the two cores
        # with Chromium and the other test worker (Playwright's default 5 s was seen to run out in CI).
        expect(locator.nth(i)).to_have_js_property("complete", True, timeout=30_000)
        assert locator.nth(i).evaluate("img => img.naturalWidth") > 0


def _insight_tabs(page) -> None:
    """The four insight tabs, on the cat sample chosen above."""
    from playwright.sync_api import expect

    # Robustness: opening the tab probes the image and sweeps the default perturbation.
    open_tab(page, "Robustness")
    _wait_plots(page, "#robustness-plot")
    _images_loaded(page.locator("#robustness-cams img"), 2)
    expect(page.locator("#robustness-note")).to_contain_text("the true class of this CIFAR-10 test image")
    expect(page.locator("#robustness-note")).to_contain_text("largest pixel change 0 of 255")
    # Move the FGSM slider: the perturbed image is attacked by 3/255 at most.
    slider = page.locator("#fgsm-slider input[type=number]")
    slider.fill("3")
    slider.blur()  # Gradio's slider sends "release" when its number box loses focus
    expect(page.locator("#robustness-note")).to_contain_text("largest pixel change 3 of 255", timeout=30_000)
    page.get_by_label("Perturbation").click()
    page.get_by_role("option", name="fgsm").click()
    page.locator("#sweep-button").click()
    expect(page.locator("#sweep-note")).to_contain_text("fgsm:", timeout=30_000)
    _wait_plots(page, "#robustness-plot")
    page.screenshot(path=str(ARTIFACTS / "browser-robustness.png"), full_page=True)
    # A new image while the tab is open: the probe and the sweep follow it.
    page.locator("#samples").locator("img").nth(24).click()  # ship_0.png
    expect(page.locator("#robustness-note")).to_contain_text("Reference class: ship", timeout=60_000)
    expect(page.locator("#sweep-note")).to_contain_text("Reference class: ship", timeout=30_000)

    # Sanity check: one button, trained vs re-initialised Grad-CAM and a verdict.
    open_tab(page, "Sanity check")
    page.locator("#sanity-button").click()
    _images_loaded(page.locator("#sanity-gallery img"), 2)
    expect(page.locator("#sanity-verdict")).to_contain_text("layer4 re-initialised", timeout=30_000)
    _wait_plots(page, "#sanity-plot")
    page.screenshot(path=str(ARTIFACTS / "browser-sanity.png"), full_page=True)

    # Test set: the confusion matrix, a pair's gallery, one image's two Grad-CAMs.
    open_tab(page, "Test set")
    _wait_plots(page, "#confusion-plot")
    _wait_plots(page, "#class-accuracy-plot")
    expect(page.locator("#pair-summary")).to_contain_text("most confident first", timeout=30_000)
    page.locator("#pair-dropdown input").click()
    option = page.get_by_role("option").nth(1)  # the second most frequent mistake
    true_name, pred_name = option.inner_text().split(" (")[0].split(" -> ")
    option.click()
    expect(page.locator("#pair-summary")).to_contain_text(f"of {true_name} predicted {pred_name}", timeout=30_000)
    thumbs = page.locator("#test-gallery img")
    expect(thumbs.first).to_be_visible(timeout=30_000)
    assert thumbs.count() >= 1
    thumbs.first.click()
    _images_loaded(page.locator("#test-cams img"), 2)
    expect(page.locator("#test-image-note")).to_contain_text(f"true class {true_name}", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "browser-testset.png"), full_page=True)

    # Calibration: the reliability diagram and what it says about the temperature.
    open_tab(page, "Calibration")
    _wait_plots(page, "#reliability-plot")
    _wait_plots(page, "#confidence-plot")
    expect(page.locator("#calibration-summary")).to_contain_text("Expected calibration error")
    page.screenshot(path=str(ARTIFACTS / "browser-calibration.png"), full_page=True)

    # A new image chosen elsewhere: the sanity check made for the last one is not shown beside it.
    page.locator("#samples").locator("img").nth(18).click()  # frog_0.png
    expect(page.locator("#true-class")).to_contain_text("frog_0.png", timeout=60_000)
    open_tab(page, "Sanity check")
    expect(page.locator("#sanity-gallery img")).to_have_count(0, timeout=30_000)
    expect(page.locator("#sanity-verdict")).to_have_text("")
