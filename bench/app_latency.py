"""How fast the explorer answers, measured the way a user meets it, with every goal beside its figure.

    python bench/app_latency.py [--quick] [--json OUT] [--skip browser,load,soak,cold,residuals]

One run measures, on this machine:

1. compute, in this process (medians of interleaved rounds, so a noisy
   neighbour hits every contestant alike): one plain forward pass at batch 1;
   pytorch-grad-cam's ``GradCAM`` on layer4 (the anchor, used as its README
   shows); and the explorer's full analysis: top-5, Grad-CAM at layer1..layer4
   upsampled to 32x32 and the 16 most active channels of every stage, on the
   model as the app serves it, with the engine the app picks on this machine
   (``insight.prepacked``; autograd's time is shown beside it). Goal: analysis
   <= 0.5x pytorch-grad-cam.
2. cold start: ``python -c "import torch, gradio"`` against ``python app.py``
   until its first /classify answer. Goal: at most 1 s more. The app imports
   them with the garbage collector off, which makes those imports faster too,
   so the same imports are also timed that way and the app's own start-up is
   shown apart.
3. a real Chromium (Playwright, Debian's chromium) on the running app: the
   page opening on its worked example; a click on a sample until the top-5 and
   the four Grad-CAM maps are visible (goal 0.5 s) and until no panel of the
   open tab is processing (goal 1.0 s); opacity, colour scale and target class
   changes until the maps are redrawn (goal 150 ms); an uploaded photo until
   its top-5 and maps are visible (goal 0.8 s). Timed in the page, from the
   user's action (the click, the slider's release, the file chosen) to the
   first frame that shows the result.
4. gradio_client round trips of the same events, and the bytes they send.
5. load: 8 clients at once on /analyze (goal: all answered, median <= 2 s),
   and a soak of 300 mixed requests after a warm-up (goal: the server's RSS
   within 15% of where it was after the warm-up).
6. the Why residuals tab: a photo the server has never seen until its gradient
   flow (three networks, one backward each) is answered, and another until its
   16 lesions are (goal 1.0 s each); the same requests again, from the cache.

Numbers depend on the machine and on what else runs on it: the report starts
with the core count and the load average.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from insight import activations, captum_reference, gradcam, render  # noqa: E402
from insight.prepacked import grad_cam_passes  # noqa: E402
from resnet import FEATURE_NAMES, preprocess  # noqa: E402
from resnet.model import fuse_batchnorm  # noqa: E402
from resnet.weights import ASSETS_DIR, load_pretrained  # noqa: E402

SAMPLES = sorted((ASSETS_DIR / "samples").glob("*.png"))
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

GOALS: dict[str, tuple[str, float]] = {
    # key: (what, goal); every goal is an upper bound
    "analysis_ratio": ("full analysis / pytorch-grad-cam layer4 (compute)", 0.5),
    "cold_start_overhead_s": ("cold start beyond importing torch and gradio (s)", 1.0),
    "browser_sample_visible_s": ("sample click -> top-5 and 4 Grad-CAM maps visible (s)", 0.5),
    "browser_sample_done_s": ("sample click -> every panel of the open tab done (s)", 1.0),
    "browser_opacity_s": ("opacity change -> maps redrawn (s)", 0.15),
    "browser_scale_s": ("colour-scale change -> maps redrawn (s)", 0.15),
    "browser_target_s": ("target-class change -> maps redrawn (s)", 0.15),
    "browser_upload_visible_s": ("uploaded photo -> top-5 and maps visible (s)", 0.8),
    "concurrent_median_s": ("8 clients at once on /analyze: median (s)", 2.0),
    "soak_rss_growth": ("RSS growth over 300 mixed requests after warm-up (fraction)", 0.15),
    "residuals_flow_new_s": ("new photo -> its gradient flow, 3 networks (s)", 1.0),
    "residuals_lesion_new_s": ("new photo -> its 16 lesions (s)", 1.0),
}


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def photo(seed: int, size: tuple[int, int] = (1280, 960)) -> bytes:
    """A made-up 'phone photo' (smooth colours plus noise), new content per seed: never in any cache."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(xx * rng.uniform(2, 8) + rng.uniform(0, 6)), np.cos(yy * rng.uniform(2, 8)),
                     np.sin((xx + yy) * rng.uniform(1, 5))], -1)
    pixels = np.clip((base * 0.5 + 0.5) * 255 + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# ----- 1. compute ------------------------------------------------------------------------------


def full_analysis(make_pass: Callable[[torch.Tensor], gradcam.Pass], x: torch.Tensor) -> dict:
    run = make_pass(x)
    result = gradcam.analysis_of(run)
    run.close()
    return {
        "top": result.top_k(5),
        "cams": {k: render.upsample(v, 32) for k, v in result.cams.items()},
        "channels": {name: activations.top_channels(result.features[name], 16) for name in FEATURE_NAMES},
    }


def interleaved(contestants: dict[str, Callable[[], Any]], repeats: int) -> dict[str, dict[str, float]]:
    for fn in contestants.values():  # warm-up: allocator, oneDNN kernels
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {k: [] for k in contestants}
    for _ in range(repeats):
        for name, fn in contestants.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1000)
    return {k: {"median_ms": median(v), "min_ms": min(v), "max_ms": max(v)} for k, v in times.items()}


def compute_timings(repeats: int) -> dict[str, Any]:
    from pytorch_grad_cam import GradCAM

    model, _ = load_pretrained()
    x = preprocess.to_model_input(preprocess.load_image(SAMPLES[0])).tensor
    cam = GradCAM(model=model, target_layers=[model.layer4])  # as its README shows: the model as trained
    served = fuse_batchnorm(model).to(memory_format=torch.channels_last).requires_grad_(False)  # as the app serves it
    x_served = x.contiguous(memory_format=torch.channels_last)
    passes = grad_cam_passes(served)  # the engine the app picks on this machine
    autograd = lambda x: gradcam.GradCamPass(served, x)  # noqa: E731

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    times = interleaved({
        "forward": forward,
        "pytorch_grad_cam_layer4": lambda: cam(input_tensor=x, targets=None),
        "full_analysis": lambda: full_analysis(passes, x_served),
        "full_analysis_autograd": lambda: full_analysis(autograd, x_served),
        "captum_reference_4_stages": lambda: captum_reference.captum_gradcam(model, x, 0),
    }, repeats)
    return {"timings": times, "engine": passes.engine, "engine_reason": passes.reason,
            "analysis_ratio": times["full_analysis"]["median_ms"] / times["pytorch_grad_cam_layer4"]["median_ms"]}


# ----- the app as a server ---------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(log: Path, *args: str, wait_warm: bool = True, deadline_s: float = 300,
                fail: Callable[[str], NoReturn] = sys.exit, **env: str) -> Iterator[tuple[str, subprocess.Popen, float, float]]:
    """``python app.py *args`` on a free port (extra environment in ``env``): (url, process, seconds to page up,
    seconds to warm-up done). An app that has not answered after ``deadline_s`` is ``fail``-ed with its log's tail."""
    import urllib.request

    port = free_port()
    full_env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1", PYTHONUNBUFFERED="1",
                    **env)
    handle = open(log, "w+")
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py", *args], cwd=ROOT, env=full_env, stdout=handle,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.perf_counter() - start > deadline_s:
                    handle.seek(0)
                    fail(f"app.py did not start:\n{handle.read()[-3000:]}")
                time.sleep(0.05)
        up = time.perf_counter() - start
        while wait_warm and "warm-up done" not in log.read_text() and time.perf_counter() - start < 300:
            time.sleep(0.2)
        yield url, proc, up, time.perf_counter() - start
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        handle.close()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


# ----- 2. cold start ---------------------------------------------------------------------------


def cold_start(runs: int, log_dir: Path) -> dict[str, Any]:
    from gradio_client import Client, handle_file

    imports, imports_gc_off, answers, pages = [], [], [], []
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, gradio"], check=True, cwd=ROOT, env=env)
        imports.append(time.perf_counter() - t)
        # The app imports them with the garbage collector off (explorer.build_demo): the same
        # imports timed that way too, so that what the app itself adds is shown apart.
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import gc; gc.disable(); import torch, gradio"], check=True, cwd=ROOT,
                       env=env)
        imports_gc_off.append(time.perf_counter() - t)
        t = time.perf_counter()
        with running_app(log_dir / "cold.log", wait_warm=False) as (url, _, up, _):
            Client(url, verbose=False).predict(handle_file(str(SAMPLES[3])), api_name="/classify")
            answers.append(time.perf_counter() - t)
            pages.append(up)
    first_answer = median(answers)
    return {"import_torch_gradio_s": median(imports), "import_torch_gradio_gc_off_s": median(imports_gc_off),
            "page_up_s": median(pages), "first_answer_s": first_answer,
            "cold_start_overhead_s": first_answer - median(imports),
            "own_start_up_s": first_answer - median(imports_gc_off), "runs": runs}


# ----- 3. the browser --------------------------------------------------------------------------

# The Grad-CAM strip (explorer/camstrip.py) draws its four canvases in the browser and counts its
# drawings in data-draws: a new count after the action is the sign the maps are on the canvases.
STRIP = "#gradcam-strip .camstrip"
VISIBLE = """(args) => {
  const truth = document.querySelector('#true-class')?.innerText || '';
  if (!truth.includes(args.text)) return false;
  const strip = document.querySelector('%s');
  return !!strip && strip.dataset.draws !== args.old && strip.querySelectorAll('canvas').length === 4;
}""" % STRIP
REDRAWN = """(old) => {
  const strip = document.querySelector('%s');
  return !!strip && strip.dataset.draws !== old && strip.querySelectorAll('canvas').length === 4;
}""" % STRIP
IDLE = """(old) => {
  const busy = document.querySelectorAll('.pending, .eta-bar, .generating').length;
  const c = document.querySelector('#contrast-image img');
  return busy === 0 && !!c && c.complete && c.naturalWidth > 0 && c.src !== old;
}"""


# The clock runs in the page, from the user's action to what they wait for, so the driver's own
# overhead (Playwright waits for an element to be stable before it clicks) is not counted:
# t0 is the last pointerdown (a click), focusout (a slider's number box left: its release) or
# change (a file chosen) before the wait; t1 the first animation frame at which the condition holds.
CLOCK = """(() => {
  for (const kind of ['pointerdown', 'focusout', 'change'])
    document.addEventListener(kind, () => { window.__t0 = performance.now(); }, true);
})();"""


def _seconds_in_page(page) -> float:
    return page.evaluate("() => (window.__t1 - window.__t0) / 1000")


def _until(condition: str) -> str:
    """``condition`` that also stamps the moment it first holds."""
    return f"(arg) => {{ const ok = ({condition})(arg); if (ok) window.__t1 = performance.now(); return ok; }}"


def _draws(page) -> str:
    return page.evaluate(f"() => document.querySelector('{STRIP}')?.dataset.draws || ''")


BUSY = "() => document.querySelectorAll('.pending, .eta-bar, .generating').length"


def _settle(page) -> None:
    """Wait until nothing on the page is processing, as a user looks at a result before the next
    move: each action is timed from a quiet page, not behind the last one's background work."""
    page.wait_for_function(f"() => ({BUSY})() === 0", polling=50, timeout=30_000)
    page.wait_for_timeout(200)


def _timed(page, action: Callable[[], None], condition: str, arg: Any, timeout_ms: int = 30_000) -> float:
    action()
    page.wait_for_function(_until(condition), arg=arg, polling="raf", timeout=timeout_ms)
    return _seconds_in_page(page)


def browser_timings(url: str, clicks: int, changes: int, uploads: int, tmp: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    out: dict[str, list[float]] = {k: [] for k in ("sample_visible", "sample_done", "opacity", "scale", "target",
                                                   "upload_visible")}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.add_init_script(CLOCK)
        t = time.perf_counter()
        page.goto(url, wait_until="domcontentloaded")
        page.wait_for_function(VISIBLE, arg={"text": SAMPLES[0].name, "old": ""}, polling=10, timeout=60_000)
        opening = time.perf_counter() - t
        page.wait_for_function(IDLE, arg="", polling=50, timeout=60_000)
        order = [i for i in range(1, len(SAMPLES))]
        random.Random(0).shuffle(order)
        for i in order[:clicks]:
            old, old_contrast = _draws(page), page.evaluate(
                "() => document.querySelector('#contrast-image img')?.src || ''")
            out["sample_visible"].append(_timed(page, page.locator("#samples img").nth(i).click, VISIBLE,
                                                {"text": SAMPLES[i].name, "old": old}))
            page.wait_for_function(_until(IDLE), arg=old_contrast, polling="raf", timeout=30_000)
            out["sample_done"].append(_seconds_in_page(page))
        slider = page.locator("#gradcam-opacity input[type=number]")
        targets = ["dog", "ship", "frog", "truck", "bird", "horse"]
        for k in range(changes):
            old = _draws(page)
            out["opacity"].append(_timed(page, lambda: (slider.fill(f"{0.3 + 0.1 * (k % 5):.2f}"), slider.blur()),
                                         REDRAWN, old))
            _settle(page)
            old = _draws(page)
            label = "shared" if k % 2 == 0 else "per map"
            out["scale"].append(_timed(page, lambda: page.locator("#gradcam-scale").get_by_label(label).check(),
                                       REDRAWN, old))
            _settle(page)
            page.locator("#gradcam-target input").click()
            option = page.get_by_role("option", name=targets[k % len(targets)], exact=True)
            old = _draws(page)
            out["target"].append(_timed(page, option.click, REDRAWN, old))
            _settle(page)
        page.locator("#gradcam-target input").click()
        page.get_by_role("option", name="predicted class", exact=True).click()
        _settle(page)
        for k in range(uploads):
            path = tmp / f"photo-{k}.jpg"
            path.write_bytes(photo(1000 + k))
            old = _draws(page)
            page.locator("#input-image button[aria-label='Remove Image']").first.click()
            _settle(page)
            out["upload_visible"].append(_timed(
                page, lambda: page.locator("#input-image input[type=file]").set_input_files(str(path)),
                VISIBLE, {"text": "your own image", "old": old}))
            _settle(page)
        browser.close()
    result: dict[str, Any] = {"opening_example_s": opening}
    for key, values in out.items():
        result[f"browser_{key}_s"] = median(values)
        result[f"browser_{key}_all_s"] = [round(v, 3) for v in values]
    return result


# ----- 4. gradio_client ------------------------------------------------------------------------


def client_timings(url: str, repeats: int, tmp: Path) -> dict[str, Any]:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    times: dict[str, list[float]] = {k: [] for k in ("classify", "analyze_sample", "analyze_photo", "gradcam_target",
                                                     "gradcam_view")}
    sizes: dict[str, int] = {}

    def timed(key: str, *args: Any, api: str) -> Any:
        t = time.perf_counter()
        result = client.predict(*args, api_name=api)
        times[key].append(time.perf_counter() - t)
        return result

    for k in range(repeats):
        sample = handle_file(str(SAMPLES[(5 + 7 * k) % len(SAMPLES)]))
        timed("classify", sample, api="/classify")
        label, truth, seen, gallery, note, raw = timed("analyze_sample", sample, "predicted class", 0.5, "per map",
                                                       api="/analyze")
        if k == 0:
            sizes["analyze_json_bytes"] = len(json.dumps([label, truth, note, raw]))
            sizes["analyze_image_bytes"] = Path(seen).stat().st_size + sum(Path(g["image"]).stat().st_size for g in gallery)
        timed("gradcam_target", sample, ["cat", "dog", "ship"][k % 3], 0.5, "per map", api="/gradcam")
        timed("gradcam_view", sample, "predicted class", 0.3 + 0.1 * (k % 5), "shared", api="/gradcam_view")
        path = tmp / f"client-photo-{k}.jpg"
        path.write_bytes(photo(2000 + k))
        timed("analyze_photo", handle_file(str(path)), "predicted class", 0.5, "per map", api="/analyze")
    return {**{f"client_{k}_s": median(v) for k, v in times.items()}, **sizes}


def residual_timings(url: str, repeats: int, tmp: Path) -> dict[str, Any]:
    """/gradient_flow and /lesion for photos the server has not seen (their analysis included), then again."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    first = time.perf_counter()  # the networks at initialisation are built on the first request
    client.predict(handle_file(str(SAMPLES[0])), "predicted class", api_name="/gradient_flow")
    first = time.perf_counter() - first
    times: dict[str, list[float]] = {k: [] for k in ("flow_new", "lesion_new", "flow_cached", "lesion_cached")}
    blocks = ["layer1.0", "layer2.0", "layer3.3", "layer4.2"]

    def timed(key: str, *args: Any, api: str) -> None:
        t = time.perf_counter()
        client.predict(*args, api_name=api)
        times[key].append(time.perf_counter() - t)

    for k in range(repeats):
        paths = []
        for j in range(2):
            paths.append(tmp / f"residuals-photo-{k}-{j}.jpg")
            paths[-1].write_bytes(photo(3000 + 2 * k + j))
        timed("flow_new", handle_file(str(paths[0])), "predicted class", api="/gradient_flow")
        timed("lesion_new", handle_file(str(paths[1])), blocks[k % 4], api="/lesion")
        timed("flow_cached", handle_file(str(paths[0])), "predicted class", api="/gradient_flow")
        timed("lesion_cached", handle_file(str(paths[1])), blocks[(k + 1) % 4], api="/lesion")
    return {"residuals_first_flow_s": first, **{f"residuals_{k}_s": median(v) for k, v in times.items()}}


# ----- 5. load ---------------------------------------------------------------------------------


def concurrent_clients(url: str, n: int, tmp: Path) -> dict[str, Any]:
    from gradio_client import Client, handle_file

    def one(k: int) -> tuple[float, str | None]:
        if k % 2:
            path = tmp / f"load-{k}-{time.time_ns()}.jpg"
            path.write_bytes(photo(3000 + k + time.time_ns() % 1000))
        else:
            path = SAMPLES[(3 * k + 1) % len(SAMPLES)]
        client = Client(url, verbose=False)
        t = time.perf_counter()
        try:
            client.predict(handle_file(str(path)), "predicted class", 0.5, "per map", api_name="/analyze")
            return time.perf_counter() - t, None
        except Exception as exc:  # every failure is counted and shown
            return time.perf_counter() - t, f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(one, range(n)))
    errors = [e for _, e in results if e]
    return {"concurrent_clients": n, "concurrent_median_s": median([t for t, _ in results]),
            "concurrent_max_s": max(t for t, _ in results), "concurrent_errors": errors}


def mixed_requests(url: str, count: int, tmp: Path, seed: int) -> int:
    """``count`` requests over the public endpoints, as a browsing user sends them; returns the failures."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    rng = random.Random(seed)
    failures = 0
    for k in range(count):
        sample = handle_file(str(SAMPLES[rng.randrange(len(SAMPLES))]))
        kind = rng.choice(["analyze", "analyze", "gradcam", "view", "classify", "blocks", "features", "photo"])
        try:
            if kind == "analyze":
                client.predict(sample, "predicted class", 0.5, "per map", api_name="/analyze")
            elif kind == "gradcam":
                client.predict(sample, rng.choice(["cat", "dog", "ship", "truck"]), 0.5, "shared", api_name="/gradcam")
            elif kind == "view":
                client.predict(sample, "predicted class", rng.random(), "per map", api_name="/gradcam_view")
            elif kind == "classify":
                client.predict(sample, api_name="/classify")
            elif kind == "blocks":
                client.predict(sample, f"layer{rng.randint(1, 4)}.0", "channel mean", 0, api_name="/block_anatomy")
            elif kind == "features":
                client.predict(sample, 8, api_name="/feature_maps")
            else:
                path = tmp / "soak-photo.jpg"
                path.write_bytes(photo(rng.randrange(10**6), size=(320, 240)))
                client.predict(handle_file(str(path)), "predicted class", 0.5, "per map", api_name="/analyze")
        except Exception:
            failures += 1
    return failures


def soak(url: str, pid: int, warmup: int, count: int, tmp: Path) -> dict[str, Any]:
    mixed_requests(url, warmup, tmp, seed=1)
    before = rss_bytes(pid)
    failures = mixed_requests(url, count, tmp, seed=2)
    after = rss_bytes(pid)
    return {"soak_requests": count, "soak_warmup_requests": warmup, "soak_failures": failures,
            "rss_after_warmup_mb": before / 2**20, "rss_after_soak_mb": after / 2**20,
            "soak_rss_growth": (after - before) / before}


# ----- report ----------------------------------------------------------------------------------


def verdict(key: str, value: Any) -> str:
    goal = GOALS[key][1]
    if not isinstance(value, (int, float)) or value != value:
        return "not measured"
    return "met" if value <= goal else f"MISSED ({value / goal:.1f}x the goal)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts (a smoke run): not the reported figures")
    parser.add_argument("--skip", default="",
                        help="comma-separated parts to skip: compute,cold,browser,client,load,soak,residuals")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    q = args.quick
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"app-latency-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)

    results: dict[str, Any] = {"machine": {
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "load_average_at_start": os.getloadavg(), "quick": q,
    }}
    print(f"CPU: {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"load average {os.getloadavg()[0]:.2f}{' (quick run: small counts)' if q else ''}", flush=True)
    if "compute" not in skip:
        results["compute"] = compute_timings(3 if q else 25)
        results["analysis_ratio"] = results["compute"]["analysis_ratio"]
        for name, t in results["compute"]["timings"].items():
            print(f"  compute {name:<28}{t['median_ms']:8.1f} ms median", flush=True)
        print(f"  full analysis engine: {results['compute']['engine']} {results['compute']['engine_reason']}".rstrip(),
              flush=True)
    if "cold" not in skip:
        results["cold"] = cold_start(1 if q else 3, tmp)
        results["cold_start_overhead_s"] = results["cold"]["cold_start_overhead_s"]
        cold = results["cold"]
        print(f"  cold: import torch+gradio {cold['import_torch_gradio_s']:.2f} s (with the garbage collector off, "
              f"as the app does: {cold['import_torch_gradio_gc_off_s']:.2f} s), app first answer "
              f"{cold['first_answer_s']:.2f} s: the app's own start-up {cold['own_start_up_s']:.2f} s", flush=True)
    if not skip >= {"browser", "client", "load", "soak", "residuals"}:
        # A quick run does not wait for the warm-up: its figures are not the reported ones anyway.
        with running_app(tmp / "app.log", wait_warm=not q) as (url, proc, up, warm):
            results["server"] = {"page_up_s": up, "warm_up_done_s": warm}
            if "browser" not in skip:
                results.update(browser_timings(url, clicks=2 if q else 8, changes=1 if q else 11, uploads=1 if q else 5,
                                               tmp=tmp))
            if "client" not in skip:
                results.update(client_timings(url, 2 if q else 10, tmp))
            if "residuals" not in skip:
                results.update(residual_timings(url, 2 if q else 6, tmp))
            if "load" not in skip:
                results.update(concurrent_clients(url, 8, tmp))
            if "soak" not in skip:
                results.update(soak(url, proc.pid, 30 if q else 100, 40 if q else 300, tmp))

    print(f"\n{'what':<66}{'measured':>10}  {'goal':>6}  verdict")
    for key, (what, goal) in GOALS.items():
        value = results.get(key)
        shown = f"{value:.3f}" if isinstance(value, (int, float)) else "-"
        print(f"{what:<66}{shown:>10}  {goal:>6}  {verdict(key, value)}")
    for key in ("opening_example_s", "client_classify_s", "client_analyze_sample_s", "client_analyze_photo_s",
                "client_gradcam_target_s", "client_gradcam_view_s", "analyze_json_bytes", "analyze_image_bytes",
                "residuals_first_flow_s", "residuals_flow_cached_s", "residuals_lesion_cached_s",
                "concurrent_errors", "soak_failures"):
        if key in results:
            print(f"  {key}: {results[key]}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
