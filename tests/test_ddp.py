"""Multi-process training through torchrun: two gloo ranks on CPU, one writer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from train.checkpoint import CHECKPOINT_FILE, load_checkpoint

REPO = Path(__file__).resolve().parent.parent


def test_two_ranks_train_their_shards_and_rank_0_writes(tiny_cifar, tmp_path):
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "train", "--data", str(tiny_cifar.archive), "--out", str(out), "--device", "cpu",
         "--epochs", "1", "--batch-size", "20", "--min-res", "8", "--res-ramp-start", "0.5", "--res-ramp-end", "1.0",
         "--eval-batch-size", "30"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Only rank 0 reports and writes.
    assert proc.stdout.count("epoch 1/1:") == 1, proc.stdout
    assert "2 x CPU" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT_FILE, "history.json"]
    ckpt = load_checkpoint(out / CHECKPOINT_FILE)
    assert ckpt["finished"] and ckpt["world"] == 2
    # 40 images in global batches of 20 = 2 steps, each rank 10 images a step, all of them counted.
    assert ckpt["global_step"] == 2
    (epoch,) = json.loads((out / "history.json").read_text())["epochs"]
    assert epoch["train_images"] == 40 and epoch["images_seen"] == 40 and epoch["test_images"] == 30
    assert 0 <= epoch["train_acc"] <= 1 and epoch["train_loss"] > 0
    # Each rank augments with its own stream; both were saved so a resume continues both.
    first, second = ckpt["aug_gen"]
    assert not torch.equal(first, second)
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
