"""The benchmark scripts run on a CPU and report what the README quotes (values are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.app_latency import GOALS

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> str:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_train_throughput_compares_ours_with_torchvision_in_one_run() -> None:
    stdout = run("bench/train_throughput.py", "--device", "cpu", "--batch-size", "2", "--steps", "1",
                 "--warmup", "1", "--blocks", "1", "--res", "8")
    assert "ours / torchvision = " in stdout
    report = json.loads(stdout.strip().splitlines()[-1])
    speeds = report["images_per_second"]
    assert speeds["ours"] > 0 and speeds["torchvision"] > 0
    assert report["ratio_ours_over_torchvision"] == speeds["ours"] / speeds["torchvision"]


def test_app_latency_reports_every_figure_beside_its_goal(tmp_path: Path) -> None:
    target = tmp_path / "latency.json"
    stdout = run("bench/app_latency.py", "--quick", "--skip", "cold,browser,soak", "--json", str(target))
    report = json.loads(target.read_text())
    for what, _goal in GOALS.values():
        assert what in stdout  # every goal has a line, measured or not
    timings = report["compute"]["timings"]
    for contestant in ("forward", "pytorch_grad_cam_layer4", "full_analysis"):
        assert timings[contestant]["min_ms"] <= timings[contestant]["median_ms"] <= timings[contestant]["max_ms"]
    ratio = timings["full_analysis"]["median_ms"] / timings["pytorch_grad_cam_layer4"]["median_ms"]
    assert abs(report["analysis_ratio"] - ratio) < 1e-9
    assert report["concurrent_clients"] == 8 and report["concurrent_errors"] == []
    assert report["client_analyze_sample_s"] > 0 and report["analyze_image_bytes"] > 0
    assert report["residuals_flow_new_s"] > 0 and report["residuals_lesion_cached_s"] > 0
