"""How fast the explorer answers, against pytorch-grad-cam measured in the same run.

    python bench/app_latency.py [--random] [--repeats 25] [--json OUT] [--no-cold]

Warm timings are medians over interleaved rounds (each round runs every
contestant once, so a noisy neighbour on a shared CPU hits all of them alike):

- forward: one plain forward pass at batch 1 (inference mode), the floor.
- pytorch-grad-cam: ``GradCAM(model, [model.layer4])`` on one 32x32 image: the anchor.
- full analysis: what the app computes per image: top-5, Captum Grad-CAM at
  layer1..layer4 upsampled to 32x32, and the 16 most active channels of the
  stem and of every stage (one forward + one backward), on the model as the
  app serves it (weights frozen: only activation gradients are needed).

Cold start runs in fresh interpreters: (a) import resnet, load the weights,
answer once; (b) start ``python app.py`` and ask /classify through
gradio_client as soon as the page answers (time to page up, and to the first
prediction back). Goals: analysis <= 0.5x pytorch-grad-cam; cold
start < 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from insight import activations, gradcam, render  # noqa: E402
from resnet import FEATURE_NAMES, preprocess, resnet50  # noqa: E402
from resnet.weights import ASSETS_DIR, load_pretrained  # noqa: E402

GOAL_RATIO = 0.5
GOAL_COLD_S = 5.0


def sample_path() -> Path:
    paths = sorted((ASSETS_DIR / "samples").glob("*.png"))
    if not paths:
        raise SystemExit(f"no sample images in {ASSETS_DIR / 'samples'}")
    return paths[0]


def full_analysis(model, x: torch.Tensor) -> dict:
    result = gradcam.analyze(model, x)
    top = result.top_k(5)
    cams = {k: render.upsample(v, 32) for k, v in result.cams.items()}
    channels = {name: activations.top_channels(result.features[name], 16) for name in FEATURE_NAMES}
    return {"top": top, "cams": cams, "channels": channels}


def warm_timings(model, x: torch.Tensor, repeats: int) -> dict[str, dict[str, float]]:
    from pytorch_grad_cam import GradCAM

    cam = GradCAM(model=model, target_layers=[model.layer4])
    frozen = resnet50(num_classes=model.fc.out_features, stem=model.stem_kind)
    frozen.load_state_dict(model.state_dict())
    frozen.eval().requires_grad_(False)  # as app.py serves it

    def forward():
        with torch.inference_mode():
            model(x)

    contestants = {
        "forward": forward,
        "pytorch_grad_cam_layer4": lambda: cam(input_tensor=x, targets=None),
        "full_analysis": lambda: full_analysis(frozen, x),
    }
    times = _interleaved(contestants, repeats)
    # Gradio runs handlers in worker threads, where PyTorch's OpenMP team is
    # less effective on 2 cores than in the main thread: measure there too.
    in_thread: dict[str, dict[str, float]] = {}
    worker = threading.Thread(
        target=lambda: in_thread.update(
            _interleaved({k: contestants[k] for k in ("pytorch_grad_cam_layer4", "full_analysis")}, repeats)
        )
    )
    worker.start()
    worker.join()
    times.update({f"{k}_worker_thread": v for k, v in in_thread.items()})
    return times


def _interleaved(contestants: dict, repeats: int) -> dict[str, dict[str, float]]:
    for fn in contestants.values():  # warm-up: allocator, oneDNN kernels
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {k: [] for k in contestants}
    for _ in range(repeats):
        for name, fn in contestants.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1000)
    return {k: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v)} for k, v in times.items()}


COLD_RESNET = """
import time; t0 = time.perf_counter()
from insight import gradcam
from resnet import preprocess, load_pretrained
model, _ = load_pretrained()
x = preprocess.to_model_input(preprocess.load_image({path!r})).tensor
gradcam.analyze(model, x)
print(time.perf_counter() - t0)
"""



def cold_start(code: str, runs: int) -> dict[str, float]:
    walls, inner = [], []
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    for _ in range(runs):
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        walls.append(time.perf_counter() - t)
        if out.returncode != 0:
            raise SystemExit(f"cold-start run failed:\n{out.stderr[-2000:]}")
        inner.append(float(out.stdout.strip().splitlines()[-1]))
    return {"first_answer_s": statistics.median(walls), "timed_inside_process_s": statistics.median(inner), "runs": runs}


def cold_start_server(path: Path, runs: int) -> dict[str, float]:
    """`python app.py` started -> first /classify answer through gradio_client, as a user would wait."""
    import socket
    import urllib.request

    from gradio_client import Client, handle_file

    walls, ready = [], []
    for _ in range(runs):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1")
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}/"
            while True:
                try:
                    urllib.request.urlopen(url, timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.perf_counter() - t > 300:
                        raise SystemExit("app.py did not start")
                    time.sleep(0.05)
            ready.append(time.perf_counter() - t)
            answer = Client(url, verbose=False).predict(handle_file(str(path)), api_name="/classify")
            walls.append(time.perf_counter() - t)
            assert answer["label"], answer
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {"first_answer_s": statistics.median(walls), "page_ready_s": statistics.median(ready), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random", action="store_true", help="random-init weights instead of the shipped ones")
    parser.add_argument("--repeats", type=int, default=25, help="interleaved rounds for the warm timings")
    parser.add_argument("--cold-runs", type=int, default=3, help="fresh interpreters per cold-start measurement")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold-start measurements")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    path = sample_path()
    if args.random:
        torch.manual_seed(0)
        model = resnet50().eval()
    else:
        model, _ = load_pretrained()
    x = preprocess.to_model_input(preprocess.load_image(path)).tensor

    warm = warm_timings(model, x, args.repeats)
    anchor = warm["pytorch_grad_cam_layer4"]["median_ms"]
    ratio = warm["full_analysis"]["median_ms"] / anchor
    results = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "load_average": os.getloadavg(),
        },
        "weights": "random init" if args.random else "shipped (assets/)",
        "image": path.name,
        "warm": warm,
        "ratio_analysis_to_pytorch_grad_cam": ratio,
        "ratio_analysis_to_forward": warm["full_analysis"]["median_ms"] / warm["forward"]["median_ms"],
        "ratio_analysis_to_pytorch_grad_cam_worker_thread": warm["full_analysis_worker_thread"]["median_ms"]
        / warm["pytorch_grad_cam_layer4_worker_thread"]["median_ms"],
    }

    print(f"CPU: {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}; weights: {results['weights']}; image {path.name}")
    print(f"{'warm, batch 1':<36}{'median ms':>10}{'min ms':>10}")
    for name, t in warm.items():
        print(f"  {name:<34}{t['median_ms']:>10.1f}{t['min_ms']:>10.1f}")
    verdict = "met" if ratio <= GOAL_RATIO else f"MISSED by {(ratio / GOAL_RATIO - 1) * 100:.0f}%"
    print(f"full analysis / pytorch-grad-cam = {ratio:.2f}x (goal <= {GOAL_RATIO}x: {verdict})")
    print(f"full analysis / forward          = {results['ratio_analysis_to_forward']:.2f}x")
    print(f"same ratio in a worker thread (as in the server) = "
          f"{results['ratio_analysis_to_pytorch_grad_cam_worker_thread']:.2f}x")

    if not args.no_cold:
        cold = {
            "resnet_import_to_first_answer": cold_start(COLD_RESNET.format(path=str(path)), args.cold_runs),
            "app_server_start_to_first_answer": cold_start_server(path, args.cold_runs),
        }
        results["cold"] = cold
        print(f"cold start, median of {args.cold_runs} fresh processes:")
        for name, c in cold.items():
            extra = ", ".join(f"{k} {v:.2f} s" for k, v in c.items() if k not in ("first_answer_s", "runs"))
            print(f"  {name:<36}{c['first_answer_s']:>7.2f} s  ({extra})")
        app_cold = cold["app_server_start_to_first_answer"]["first_answer_s"]
        verdict = "met" if app_cold < GOAL_COLD_S else f"MISSED by {app_cold - GOAL_COLD_S:.1f} s"
        print(f"app cold start / goal = {app_cold / GOAL_COLD_S:.2f}x of {GOAL_COLD_S:.0f} s ({verdict})")

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
