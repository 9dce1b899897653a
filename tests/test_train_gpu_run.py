"""The GPU job, rehearsed on CPU: train/gpu_run.sh itself, end to end, with tiny settings.

The GPU session spends its minutes on this one script, so a typo, a CPU-only
code path, a forgotten file or a missing import must show up here first. The
script reads its tiny settings from the environment; everything else (the
train, export, benchmark and packing commands) is what the GPU box runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from insight.atlas import ATLAS_FILE, load_atlas
from insight.replay import REPLAY_FILE, load_replay
from resnet.weights import WEIGHTS_FILE, load_pretrained

REPO = Path(__file__).resolve().parent.parent
MiB = 2**20


@pytest.fixture(scope="module")
def job(tiny_cifar, tmp_path_factory):
    base = tmp_path_factory.mktemp("gpu_job")
    env = {
        **os.environ, "OMP_NUM_THREADS": "1",
        # The interpreter running the tests, whatever `python3` on PATH is (a virtual environment
        # that is not activated leaves the system's there); the GPU box keeps the script's python3.
        "PYTHON": sys.executable,
        "OUT": str(base / "out"), "RUNS": str(base / "runs"), "DATA": str(tiny_cifar.archive), "DEVICE": "cpu",
        "EPOCHS": "1",
        "TRAIN_ARGS": "--batch-size 10 --min-res 8 --res-ramp-start 0.5 --res-ramp-end 1.0 --eval-batch-size 30 "
                      "--bn-recalibration 20 --lesion-images 4",
        "BENCH_ARGS": "--batch-size 2 --steps 1 --warmup 1 --blocks 1 --res 8",
    }
    proc = subprocess.run(["bash", "train/gpu_run.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    return base, proc


def test_the_job_trains_exports_benchmarks_and_ends_with_its_summary(job):
    base, proc = job
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    summary = lines[lines.index("=== GPU job summary ===") + 1 :]
    assert summary[-1].startswith("exit codes: train 0, bench 0; weights sha256 "), summary
    text = "\n".join(summary)
    assert "test accuracy" in text and "CIFAR-10 (JPEG q75 copy)" in text and "float32" in text
    assert "ratio" in text and "replay" in text and "whole command" in text
    assert (base / "runs" / "gpu" / "checkpoint.pt").is_file(), "runs/ stays on the box"


def test_the_packed_files_fit_the_transfer_and_the_weights_rejoin_to_their_sha256(job):
    base, proc = job
    files = sorted((base / "out").iterdir())
    assert 2 <= len(files) <= 8 and all(f.stat().st_size <= 16 * MiB for f in files), [(f.name, f.stat().st_size) for f in files]
    parts = sorted((base / "out").glob(f"{WEIGHTS_FILE}.part-*"))
    assert len(parts) == 3, "47 MB of float16 weights in 15 MiB parts"
    joined = b"".join(p.read_bytes() for p in parts)
    digest = hashlib.sha256(joined).hexdigest()
    assert f"weights sha256 {digest}" in proc.stdout
    assert joined == (base / "runs" / "gpu-export" / WEIGHTS_FILE).read_bytes()


def test_unpacking_installs_everything_the_app_serves(job, tmp_path):
    base, _ = job
    assets = tmp_path / "assets"
    proc = subprocess.run(["bash", "train/gpu_unpack.sh", str(base / "out"), str(assets)], cwd=REPO,
                          env={**os.environ, "LOGS_TO": str(tmp_path / "logs")}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{WEIGHTS_FILE}: OK" in proc.stdout
    names = {p.name for p in assets.iterdir()}
    assert {WEIGHTS_FILE, "model_card.json", "history.json", "evaluation.json", "test_gallery.npz", REPLAY_FILE,
            ATLAS_FILE, "samples"} <= names
    assert len(list((assets / "samples").glob("*.png"))) == 30
    model, card = load_pretrained(assets)
    assert card["command_seconds"] >= card["training_seconds"] > 0 and card["epochs"] == 1
    assert load_replay(assets / REPLAY_FILE).eval_epoch.tolist() == [1]
    assert load_atlas(assets / ATLAS_FILE).meta["weights_sha256"] == hashlib.sha256((assets / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert {"train.log", "bench.log", "environment.log"} <= {p.name for p in (tmp_path / "logs").iterdir()}
    assert json.loads((tmp_path / "logs" / "bench.log").read_text().strip().splitlines()[-1])["ratio_ours_over_torchvision"] > 0


def test_a_corrupted_part_is_refused_and_installs_nothing(job, tmp_path):
    base, _ = job
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in (base / "out").iterdir():
        data = f.read_bytes()
        if f.name.endswith("part-01") and f.name.startswith(WEIGHTS_FILE):
            data = data[:-1] + bytes([data[-1] ^ 1])
        (broken / f.name).write_bytes(data)
    proc = subprocess.run(["bash", "train/gpu_unpack.sh", str(broken), str(tmp_path / "assets")], cwd=REPO,
                          env={**os.environ, "LOGS_TO": str(tmp_path / "logs")}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and "FAILED" in proc.stdout + proc.stderr
    assert not (tmp_path / "assets").exists()
