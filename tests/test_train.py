"""The training loop: one epoch works, runs are reproducible, resume is exact, divergence is caught."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from insight.replay import REPLAY_FILE, load_replay, record_steps
from train import ConfigError, DataError, TrainConfig, TrainingDiverged, fit, load_cifar10
from train.checkpoint import CHECKPOINT_FILE, load_checkpoint
from train.config import build_parser, config_from_args
from train.trainer import HISTORY_FILE, TIMING_KEYS, lr_factor, peak_lr, resolution_at

REPO = Path(__file__).resolve().parent.parent
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_torch_thread):
    """Before every other module fixture: the reference runs use one thread too."""
HISTORY_KEYS = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "epoch_seconds",
                "images_per_second", "resolution"}


@pytest.fixture(scope="module")
def tiny_data(tiny_cifar):
    return load_cifar10(tiny_cifar.archive)


def tiny_config(tiny_cifar, out: Path, **overrides) -> TrainConfig:
    # 40 images, batches of 10: 4 steps per epoch, at 8 px rising to 24 px, so a step is cheap on CPU.
    # The replay's snapshots (30 probe images at 32 px, forward and two backwards) cost more than
    # such a step: on only where a test is about it (it changes no step: see the same-seed test).
    values = dict(data=str(tiny_cifar.archive), out=str(out), epochs=2, batch_size=10, min_res=8,
                  res_ramp_start=0.5, res_ramp_end=1.0, eval_batch_size=30, replay=False)
    values.update(overrides)
    return TrainConfig(**values)


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in history]


def final_state(out: Path) -> dict:
    ckpt = load_checkpoint(out / CHECKPOINT_FILE)
    return {"model": ckpt["model"], "ema": ckpt["ema"], "history": ckpt["history"], "finished": ckpt["finished"]}


def assert_same_replay(got: Path, expected: Path) -> None:
    """The replay files of two runs hold the same arrays (timings are not in them)."""
    with np.load(got / REPLAY_FILE) as a, np.load(expected / REPLAY_FILE) as b:
        assert a.files == b.files
        different = [k for k in a.files if not np.array_equal(a[k], b[k])]
    assert not different, f"replay arrays differ: {different}"


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def reference(tiny_cifar, tiny_data, tmp_path_factory):
    """An uninterrupted two-epoch run: what every other run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    result = fit(tiny_config(tiny_cifar, out, replay=True), data=tiny_data, show_progress=False)
    return out, result


def test_one_epoch_trains_and_writes_history_and_checkpoint(tiny_cifar, tiny_data, tmp_path):
    out = tmp_path / "one"
    result = fit(tiny_config(tiny_cifar, out, epochs=1, res_ramp_start=0.25, res_ramp_end=0.75, eval_images=12),
                 data=tiny_data, show_progress=False)
    assert result.finished
    history = json.loads((out / HISTORY_FILE).read_text())
    assert history["config"]["epochs"] == 1
    (h,) = history["epochs"]
    assert HISTORY_KEYS <= h.keys() and h["epoch"] == 1
    assert 0 <= h["train_acc"] <= 1 and 0 <= h["test_acc"] <= 1
    assert h["train_loss"] > 0 and h["test_loss"] > 0 and h["lr"] > 0 and h["images_per_second"] > 0
    # Progressive resizing: starts at min_res, and the last phase runs at full resolution.
    assert h["resolution_steps"]["8"] >= 1 and h["resolution"] == 32
    assert h["images_seen"] == 40 and h["test_images"] == 12, "eval_images caps the evaluation during training"
    ckpt = load_checkpoint(out / CHECKPOINT_FILE)
    assert ckpt["finished"] and ckpt["global_step"] == 4
    assert not all(torch.equal(ckpt["ema"][k], ckpt["model"][k]) for k in ckpt["model"]), "EMA must lag the weights"


def test_history_of_two_epochs(reference):
    out, result = reference
    epochs = json.loads((out / HISTORY_FILE).read_text())["epochs"]
    assert [h["epoch"] for h in epochs] == [1, 2]
    assert epochs == json.loads(json.dumps(result.history))
    assert epochs[1]["lr"] < epochs[0]["lr"], "the one-cycle schedule decays after warm-up"
    assert epochs[1]["images_seen"] == 80
    assert all(h["test_images"] == 30 for h in epochs), "eval_every=1 evaluates every epoch on the whole split"


def test_same_seed_gives_identical_history_and_weights_with_or_without_the_replay(tiny_cifar, tiny_data, reference,
                                                                                   tmp_path):
    out, result = reference  # recorded the replay; this run does not
    again = fit(tiny_config(tiny_cifar, tmp_path / "again"), data=tiny_data, show_progress=False)
    assert without_timing(again.history) == without_timing(result.history)
    assert_same_weights(final_state(tmp_path / "again")["ema"], final_state(out)["ema"])


def test_another_seed_gives_another_run(tiny_cifar, tiny_data, reference, tmp_path):
    other = fit(tiny_config(tiny_cifar, tmp_path / "other", seed=1, epochs=1), data=tiny_data, show_progress=False)
    assert other.history[0]["train_loss"] != reference[1].history[0]["train_loss"]


def test_interrupted_runs_resume_to_the_same_result(tiny_cifar, tiny_data, reference, tmp_path):
    out = tmp_path / "resumed"
    # Stop mid-epoch 1, then mid-epoch 2 (crossing an epoch end), then finish.
    first = fit(tiny_config(tiny_cifar, out, replay=True, stop_after_steps=3), data=tiny_data, show_progress=False)
    assert not first.finished and first.stopped_by == "stop_after_steps"
    ckpt = load_checkpoint(out / CHECKPOINT_FILE)
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]) == (0, 3, 3)
    second = fit(tiny_config(tiny_cifar, out, replay=True, resume=True, stop_after_steps=6), data=tiny_data,
                 show_progress=False)
    assert not second.finished and len(second.history) == 1
    last = fit(tiny_config(tiny_cifar, out, replay=True, resume=True), data=tiny_data, show_progress=False)
    assert last.finished
    expected = final_state(reference[0])
    got = final_state(out)
    assert without_timing(got["history"]) == without_timing(expected["history"])
    assert_same_weights(got["model"], expected["model"])
    assert_same_weights(got["ema"], expected["ema"])
    assert_same_replay(out, reference[0])


def test_sigterm_saves_a_checkpoint_that_resumes_exactly(tiny_cifar, tiny_data, reference, tmp_path):
    out = tmp_path / "signalled"
    cfg = tiny_config(tiny_cifar, out, replay=True)  # the CLI records the replay by default
    args = ["--data", cfg.data, "--out", cfg.out, "--epochs", "2", "--batch-size", "10", "--min-res", "8",
            "--res-ramp-start", "0.5", "--res-ramp-end", "1.0", "--eval-batch-size", "30"]
    proc = subprocess.Popen([sys.executable, "-m", "train", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ONE_THREAD)
    try:
        line = proc.stdout.readline()  # printed once the handlers are in place, before the first step
        assert line.startswith("training ResNet-50"), line + proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stdout + stderr
    assert "--resume" in stderr
    ckpt = load_checkpoint(out / CHECKPOINT_FILE)
    assert ckpt["stopped"] and not ckpt["finished"] and ckpt["global_step"] < 8
    fit(dataclasses.replace(cfg, resume=True), data=tiny_data, show_progress=False)
    expected, got = final_state(reference[0]), final_state(out)
    assert without_timing(got["history"]) == without_timing(expected["history"])
    assert_same_weights(got["ema"], expected["ema"])
    assert_same_replay(out, reference[0])


def test_resume_refuses_a_changed_recipe(tiny_cifar, tiny_data, reference, tmp_path):
    with pytest.raises(ConfigError, match=r"lr: 0.1 in the checkpoint, 0.3 now"):
        fit(tiny_config(tiny_cifar, reference[0], resume=True, lr=0.3), data=tiny_data, show_progress=False)


def test_an_existing_run_is_not_overwritten_by_accident(tiny_cifar, tiny_data, reference):
    before = (reference[0] / CHECKPOINT_FILE).stat().st_mtime_ns
    with pytest.raises(ConfigError, match="--resume .* --overwrite"):
        fit(tiny_config(tiny_cifar, reference[0]), data=tiny_data, show_progress=False)
    assert (reference[0] / CHECKPOINT_FILE).stat().st_mtime_ns == before


def test_resume_without_checkpoint_is_a_clear_error(tiny_cifar, tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="Nothing to resume"):
        fit(tiny_config(tiny_cifar, tmp_path / "empty", resume=True), data=tiny_data, show_progress=False)


def test_divergence_stops_without_writing_garbage(tiny_cifar, tiny_data, tmp_path):
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "resnet50_cifar10.safetensors").write_bytes(b"previous good weights")
    out = tmp_path / "diverged"
    with pytest.raises(TrainingDiverged, match="NaN or infinite.*Lower --lr"):
        # With the replay on, NaN weights can show in a snapshot before the next loss check: also a divergence.
        fit(tiny_config(tiny_cifar, out, lr=1e30, export_to=str(assets), replay=True), data=tiny_data,
            show_progress=False)
    assert not (out / CHECKPOINT_FILE).exists()
    assert not (out / HISTORY_FILE).exists()
    assert sorted(p.name for p in assets.iterdir()) == ["resnet50_cifar10.safetensors"]
    assert (assets / "resnet50_cifar10.safetensors").read_bytes() == b"previous good weights"


def test_cli_reports_bad_data_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env=ONE_THREAD)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


# ----- config and schedules (no training) -----


def test_every_config_field_has_a_flag_with_its_unit():
    parser = build_parser()
    by_dest = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(TrainConfig):
        action = by_dest[f.name]
        flag = "--" + f.name.replace("_", "-")
        assert action.option_strings[0] == flag
        if isinstance(f.default, bool):
            assert action.option_strings == [flag, flag.replace("--", "--no-")]
        assert action.default == f.default
        assert f.metadata["help"]
        if f.metadata["unit"]:
            assert f"[{f.metadata['unit']}]" in action.help


def test_cli_flags_become_the_config():
    cfg = config_from_args(["--epochs", "3", "--lr", "0.05", "--no-nesterov", "--schedule", "cosine", "--data", "x"])
    assert (cfg.epochs, cfg.lr, cfg.nesterov, cfg.schedule, cfg.data) == (3, 0.05, False, "cosine", "x")
    assert cfg.batch_size == TrainConfig().batch_size


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"warmup": 1.0}, {"min_res": 2}, {"schedule": "step"},
                                 {"res_ramp_start": 0.9, "res_ramp_end": 0.5}, {"resume": True, "overwrite": True},
                                 {"lesion_images": 0}])
def test_out_of_range_settings_are_refused(bad):
    with pytest.raises(ConfigError):
        TrainConfig(**bad)


def test_lr_warms_up_then_decays_to_zero():
    cfg = TrainConfig(warmup=0.2, warmup_from=0.0)
    lrs = [lr_factor(s, 100, cfg) for s in range(100)]
    assert lrs[19] == pytest.approx(1.0) and lrs[0] == pytest.approx(0.05)
    assert all(a < b for a, b in zip(lrs[:19], lrs[1:20]))
    assert all(a > b for a, b in zip(lrs[20:], lrs[21:]))
    assert 0 < lrs[-1] < 0.02
    cosine = [lr_factor(s, 100, dataclasses.replace(cfg, schedule="cosine")) for s in range(100)]
    assert cosine[20] == pytest.approx(1.0) and cosine[40] > lrs[40]


def test_the_default_warm_up_starts_at_a_fifth_of_the_peak():
    """0.04 -> 0.2 at batch 512, the ResNet-18 recipe the GPU default follows."""
    cfg = TrainConfig()
    lrs = [lr_factor(s, 1000, cfg) for s in range(1000)]
    assert lrs[0] == pytest.approx(0.2, abs=0.01) and lrs[199] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:199], lrs[1:200]))
    assert peak_lr(cfg) == pytest.approx(0.2) and cfg.batch_size == 512


def test_resolution_ramps_from_min_res_to_32_in_steps():
    cfg = TrainConfig(min_res=16, res_ramp_start=0.5, res_ramp_end=0.9, res_step=8)
    res = [resolution_at(s, 100, cfg) for s in range(100)]
    assert res[0] == 16 and res[49] == 16 and res[-1] == 32 and res[90] == 32
    assert set(res) == {16, 24, 32}
    assert res == sorted(res)
    assert {resolution_at(s, 100, TrainConfig(min_res=32)) for s in range(100)} == {32}


# ----- the package's shape, the GPU-run guards --------------------------------------------


def test_no_module_of_train_imports_one_that_imports_it_back():
    """export runs at the end of training but must not need the trainer (issue 9: the circle is gone)."""
    import ast

    graph = {}
    for path in (REPO / "train").glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                deps.add(node.module.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("train."):
                deps.add(node.module.split(".")[1])
        graph[path.stem] = deps

    def reaches(start: str, goal: str, seen: frozenset = frozenset()) -> bool:
        return any(d == goal or (d not in seen and reaches(d, goal, seen | {d})) for d in graph.get(start, ()))

    circles = sorted(m for m in graph if reaches(m, m))
    assert not circles, f"import circles through {circles}"
    assert "trainer" in graph["__main__"] and "trainer" not in graph["export"]


def test_checkpoints_are_written_at_the_end_only_unless_asked(tiny_cifar, tiny_data, tmp_path, monkeypatch):
    import train.trainer as trainer

    saved = []
    real = trainer.save_checkpoint
    monkeypatch.setattr(trainer, "save_checkpoint", lambda path, state: (saved.append(state["epoch"]), real(path, state)))
    fit(tiny_config(tiny_cifar, tmp_path / "a"), data=tiny_data, show_progress=False)
    assert saved == [2], "a 2-epoch run writes one checkpoint, when it finishes"
    saved.clear()
    fit(tiny_config(tiny_cifar, tmp_path / "b", checkpoint_every=1), data=tiny_data, show_progress=False)
    assert saved == [1, 2]


def test_a_missing_module_stops_the_run_before_the_first_step(tiny_cifar, tiny_data, tmp_path, monkeypatch):
    import train.trainer as trainer

    monkeypatch.setattr(trainer, "RUN_MODULES", (*trainer.RUN_MODULES, "no_such_module_xyz"))
    with pytest.raises(ConfigError, match="lacks what the run needs: no_such_module_xyz"):
        fit(tiny_config(tiny_cifar, tmp_path / "run"), data=tiny_data, show_progress=False)
    assert not (tmp_path / "run").exists(), "nothing trained, nothing written"


def test_the_default_data_path_is_inside_the_checkout_and_says_where_to_get_it(tmp_path, monkeypatch):
    assert TrainConfig().data == "data/cifar10-jpeg.tar.gz"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"mkdir -p data && cp ../shared/data/cifar10-jpeg.tar.gz data/"):
        load_cifar10(TrainConfig().data)


def test_bn_recalibration_gives_the_plain_statistics_of_the_batches():
    from torch import nn

    from train.trainer import recalibrate_bn

    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3, momentum=0.1)
    model = nn.Sequential(bn).eval()
    batches = [torch.randn(8, 3, 4, 4) * (i + 1) + i for i in range(3)]
    recalibrate_bn(model, batches, use_amp=False)
    every = torch.cat(batches)
    assert torch.allclose(bn.running_mean, every.mean((0, 2, 3)), atol=1e-5)
    # A cumulative average of each batch's unbiased variance, each batch weighted alike.
    var = torch.stack([b.var((0, 2, 3), unbiased=True) for b in batches]).mean(0)
    assert torch.allclose(bn.running_var, var, atol=1e-4)
    assert bn.momentum == 0.1 and not model.training, "momentum and mode come back as they were"


def test_the_ema_gets_its_own_batchnorm_statistics_at_the_end(tiny_cifar, tiny_data, reference, tmp_path):
    averaged = fit(tiny_config(tiny_cifar, tmp_path / "averaged", bn_recalibration=0), data=tiny_data, show_progress=False)
    assert reference[1].history[-1]["train_loss"] == averaged.history[-1]["train_loss"], "recalibration changes no step"
    ours, theirs = final_state(reference[0])["ema"], final_state(tmp_path / "averaged")["ema"]
    assert torch.equal(ours["conv1.weight"], theirs["conv1.weight"]) and torch.equal(ours["fc.weight"], theirs["fc.weight"])
    assert not torch.allclose(ours["bn1.running_mean"], theirs["bn1.running_mean"])
    assert int(ours["bn1.num_batches_tracked"]) == 4, "40 training images in batches of 10"


# ----- the training replay -----------------------------------------------------------------


def test_the_replay_snapshots_the_shipped_samples_at_step_0_early_steps_and_every_epoch_end(reference, tiny_data):
    out, result = reference
    replay = load_replay(out / REPLAY_FILE)
    # 4 steps per epoch: steps 0..3 of the first epoch, then the ends of epochs 1 and 2.
    assert replay.step.tolist() == sorted({*record_steps(4), 4, 8})
    assert replay.epoch.tolist() == [s / 4 for s in replay.step] and replay.images_seen.tolist() == [10 * s for s in replay.step]
    from train.data import sample_rows

    probes = sample_rows(tiny_data.test.labels)
    assert list(replay.probe_names) == list(probes), "the probe set is the shipped samples, in their order"
    assert replay.probe_labels.tolist() == tiny_data.test.labels[list(probes.values())].tolist()
    # One evaluation per epoch, on the images the history's test accuracy counts.
    assert replay.eval_epoch.tolist() == [1, 2]
    accuracies = np.trace(replay.confusion, axis1=1, axis2=2) / replay.confusion.sum((1, 2))
    assert accuracies.tolist() == pytest.approx([h["test_acc"] for h in result.history])
    # Zero-init residual: every block starts as the identity, so its last BN's |gamma| is 0 at step 0.
    assert np.all(replay.bn3_gamma[0] == 0) and np.any(replay.bn3_gamma[-1] > 0)


def test_the_last_snapshot_is_the_evaluated_model(reference, tiny_data):
    """Seen through the weights that are exported: the EMA after its BatchNorm recalibration."""
    from insight.replay import probe_snapshot
    from train.data import sample_rows

    out, result = reference
    replay = load_replay(out / REPLAY_FILE)
    rows = list(sample_rows(tiny_data.test.labels).values())
    snap = probe_snapshot(result.model, tiny_data.test.images[rows], tiny_data.test.labels[rows])
    assert np.allclose(replay.probs[-1], snap["probs"], atol=2e-3)  # stored as float16
    assert replay.pred[-1].tolist() == snap["pred"].tolist()


def test_the_replay_stays_in_the_checkpoint_and_can_be_turned_off(reference, tiny_cifar, tiny_data, tmp_path):
    ckpt = load_checkpoint(reference[0] / CHECKPOINT_FILE)
    assert ckpt["replay"]["step"].tolist() == load_replay(reference[0] / REPLAY_FILE).step.tolist()
    assert ckpt["replay_seconds"] > 0
    fit(tiny_config(tiny_cifar, tmp_path / "off", epochs=1), data=tiny_data, show_progress=False)
    assert not (tmp_path / "off" / REPLAY_FILE).exists()
    assert load_checkpoint(tmp_path / "off" / CHECKPOINT_FILE)["replay"] is None
