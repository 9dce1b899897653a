"""Multi-process training through torchrun: two gloo ranks on CPU, one writer (of the replay too)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from insight.replay import REPLAY_FILE, load_replay, record_steps
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
    # Only rank 0 reports and writes, the replay (on by default) included.
    assert proc.stdout.count("epoch 1/1:") == 1, proc.stdout
    assert proc.stdout.count("replay: ") == 1, proc.stdout
    assert "2 x CPU" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT_FILE, "history.json", REPLAY_FILE]
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
    # Rank 0 saw the global steps: step 0, the first epoch's early steps (of 2), its end; one evaluation.
    replay = load_replay(out / REPLAY_FILE)
    assert replay.step.tolist() == sorted({*record_steps(2), 2}) and replay.images_seen.tolist()[-1] == 40
    assert replay.eval_epoch.tolist() == [1] and int(replay.confusion[0].sum()) == 30
    assert np.array_equal(ckpt["replay"]["step"].numpy(), replay.step)
