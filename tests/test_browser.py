"""A real browser drives the explorer: click a sample, see a prediction and the
Grad-CAM images, open every tab and see its Plotly charts drawn.

Runs Debian's headless Chromium through Playwright. A missing browser is a
failure, not a skip (CI must run this), unless ALLOW_NO_BROWSER=1.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    # A private assets folder: the shipped weights and samples, plus a
    # synthetic history.json so the training chart is exercised whether or
    # not the real one has been exported yet.
    assets = tmp_path_factory.mktemp("assets")
    for name in ("resnet50_cifar10.safetensors", "model_card.json"):
        if (ROOT / "assets" / name).exists():
            (assets / name).symlink_to(ROOT / "assets" / name)
    shutil.copytree(ROOT / "assets" / "samples", assets / "samples")
    (assets / "history.json").write_text(json.dumps(_fake_history()))
    port = _free_port()
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1", EXPLORER_ASSETS_DIR=str(assets))
    log = open(tmp_path_factory.mktemp("log") / "app.log", "w+")
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                log.seek(0)
                pytest.fail(f"app.py did not start:\n{log.read()[-3000:]}")
            time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _plotly_count(page, selector: str) -> int:
    return page.locator(f"{selector} .js-plotly-plot svg.main-svg").count()


def test_click_sample_then_every_tab_renders(app_url):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        try:
            page.goto(app_url, wait_until="domcontentloaded")
            samples = page.locator("#samples")
            expect(samples).to_be_visible(timeout=30_000)
            # Samples are in class order, three per class: the 10th is cat_0.png.
            samples.locator("img").nth(9).click()

            # The prediction: gr.Label shows the top-5 class names.
            prediction = page.locator("#prediction")
            expect(prediction.get_by_text("%").first).to_be_visible(timeout=60_000)
            expect(page.locator("#true-class")).to_contain_text("True class: cat", timeout=30_000)
            # The 32x32 image the model saw and the four Grad-CAM overlays.
            expect(page.locator("#seen-image img")).to_be_visible(timeout=30_000)
            gallery_images = page.locator("#gradcam-gallery img")
            expect(gallery_images).to_have_count(4, timeout=60_000)
            for i in range(4):
                expect(gallery_images.nth(i)).to_have_js_property("complete", True)
                assert gallery_images.nth(i).evaluate("img => img.naturalWidth") > 0
            expect(page.get_by_text("layer4 · 4x4").first).to_be_visible()

            page.get_by_role("tab", name="Feature maps").click()
            page.wait_for_function(
                "() => document.querySelectorAll('.feature-plot .js-plotly-plot svg.main-svg').length >= 5",
                timeout=60_000,
            )

            page.screenshot(path=str(ARTIFACTS / "browser-features.png"), full_page=True)
            page.get_by_role("tab", name="Inside a residual block").click()
            page.wait_for_function(
                "() => document.querySelectorAll('.anatomy-plot .js-plotly-plot svg.main-svg').length >= 2",
                timeout=60_000,
            )
            assert page.locator(".anatomy-plot .js-plotly-plot .bars path").count() >= 16  # one bar per block

            page.screenshot(path=str(ARTIFACTS / "browser-blocks.png"), full_page=True)
            page.get_by_role("tab", name="Training curves").click()
            page.wait_for_function(
                "() => document.querySelectorAll('#training-plot .js-plotly-plot svg.main-svg').length >= 1",
                timeout=30_000,
            )
            expect(page.locator("#training-plot").get_by_text("seed notebook 75.6%")).to_be_visible()

            page.screenshot(path=str(ARTIFACTS / "browser-training.png"), full_page=True)
            page.get_by_role("tab", name="The model").click()
            expect(page.locator("#architecture").get_by_text("layer4").first).to_be_visible(timeout=10_000)
            expect(page.locator("#model-card").get_by_text("Data set")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "browser-model.png"), full_page=True)

            page.get_by_role("tab", name="Grad-CAM at every stage").click()
            expect(gallery_images).to_have_count(4)
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
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "browser-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
