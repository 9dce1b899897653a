"""The benchmark scripts run on a CPU and report what the README quotes (values are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


def test_app_latency_reports_both_ratios(tmp_path: Path) -> None:
    target = tmp_path / "latency.json"
    stdout = run("bench/app_latency.py", "--repeats", "2", "--no-cold", "--json", str(target))
    assert "full analysis / pytorch-grad-cam = " in stdout
    report = json.loads(target.read_text())
    warm = report["warm"]
    for contestant in ("forward", "pytorch_grad_cam_layer4", "full_analysis"):
        assert warm[contestant]["min_ms"] <= warm[contestant]["median_ms"] <= warm[contestant]["max_ms"]
    ratio = warm["full_analysis"]["median_ms"] / warm["pytorch_grad_cam_layer4"]["median_ms"]
    assert abs(report["ratio_analysis_to_pytorch_grad_cam"] - ratio) < 1e-9
