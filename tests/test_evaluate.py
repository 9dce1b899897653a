"""Calibration maths, evaluation.json / test_gallery.npz, and the export the app serves."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from insight.calibration import expected_calibration_error, fit_temperature, reliability, softmax
from insight.residuals import LESIONS_FILE
from resnet.constants import CLASSES, JPEG_DATASET_NAME
from resnet.model import resnet50
from resnet.weights import data_contract, load_pretrained, load_state_dict, save_weights
from train import TrainConfig, fit, load_cifar10
from train.evaluate import evaluate_model, evaluation_report, gallery_index
from train.export import ExportError, export_run

REPO = Path(__file__).resolve().parent.parent
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_torch_thread):
    """Before every other module fixture: the reference runs use one thread too."""
EVALUATION_KEYS = {
    "dataset", "weights", "n", "accuracy", "accuracy_tta", "per_class_accuracy", "confusion_matrix", "ece",
    "ece_bins", "reliability", "temperature", "temperature_fit_on", "ece_after_temperature",
    "reliability_after_temperature", "predictions",
}
BIN_KEYS = {"bin_lower", "bin_upper", "confidence", "accuracy", "count"}
CARD_KEYS = {"architecture", "classes", "mean", "std", "input_size", "dataset", "test_accuracy", "test_accuracy_tta",
             "training_seconds", "device", "config", "epochs", "notes"}


# ----- calibration -------------------------------------------------------------------------


def test_ece_of_a_calibrated_toy_is_near_zero():
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.1, 1.0, 200_000)
    correct = rng.random(confidence.size) < confidence  # right exactly as often as it claims
    assert expected_calibration_error(confidence, correct) < 0.01


def test_ece_of_an_overconfident_toy_is_the_gap():
    rng = np.random.default_rng(0)
    confidence = np.full(100_000, 0.95)
    correct = rng.random(confidence.size) < 0.6
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.35, abs=0.01)


def test_reliability_bins_partition_the_samples():
    confidence = np.array([0.0, 0.05, 0.5, 0.51, 1.0, 1.0])
    bins = reliability(confidence, np.array([1, 0, 1, 1, 0, 1]), n_bins=10)
    assert set(bins) == BIN_KEYS
    assert sum(bins["count"]) == 6
    assert bins["bin_lower"][0] == 0.0 and bins["bin_upper"][-1] == 1.0
    assert bins["count"][0] == 2 and bins["count"][4] == 1 and bins["count"][5] == 1 and bins["count"][9] == 2
    assert bins["accuracy"][9] == 0.5 and bins["confidence"][9] == 1.0
    with pytest.raises(ValueError, match="probabilities"):
        reliability(np.array([1.5]), np.array([1]))


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_fit_temperature_recovers_a_known_temperature(true_t):
    rng = np.random.default_rng(1)
    base = rng.normal(0, 2.5, size=(20_000, 10))
    labels = (rng.random((base.shape[0], 1)) > softmax(base).cumsum(1)).sum(1)  # sampled from softmax(base)
    assert fit_temperature(base * true_t, labels) == pytest.approx(true_t, rel=0.05)
    assert fit_temperature(torch.from_numpy(base), torch.from_numpy(labels)) == pytest.approx(1.0, rel=0.05)


def test_temperature_scaling_lowers_the_ece_of_overconfident_logits():
    rng = np.random.default_rng(2)
    base = rng.normal(0, 2.0, size=(20_000, 10))
    labels = (rng.random((base.shape[0], 1)) > softmax(base).cumsum(1)).sum(1)
    hot = base * 3
    t = fit_temperature(hot, labels)
    before, after = softmax(hot), softmax(hot, t)
    ece = lambda p: expected_calibration_error(p.max(1), p.argmax(1) == labels)  # noqa: E731
    assert ece(after) < 0.02 < ece(before)


# ----- evaluation.json -------------------------------------------------------------------------


def test_report_values_agree_with_each_other():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(10), 7)
    logits = torch.from_numpy(rng.normal(0, 1, (labels.size, 10)))
    logits[np.arange(0, labels.size, 2), labels[::2]] += 4  # every other image is easy
    report = evaluation_report(logits, logits.flip(0), labels, dataset="toy", weights="w.safetensors")
    assert EVALUATION_KEYS <= report.keys()
    p = report["predictions"]
    pred, label = np.array(p["pred"]), np.array(p["label"])
    cm = np.array(report["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == labels.size
    assert cm.sum(1).tolist() == [7] * 10, "rows are the true classes"
    assert report["accuracy"] == pytest.approx(np.trace(cm) / labels.size) == pytest.approx((pred == label).mean())
    assert report["per_class_accuracy"] == pytest.approx(list(cm.diagonal() / 7), abs=1e-6)
    assert np.all(np.array(p["confidence"]) >= np.array(p["true_class_prob"]) - 1e-6)
    assert sum(report["reliability"]["count"]) == labels.size
    assert sum(report["reliability_after_temperature"]["count"]) == labels.size // 2
    assert "even-indexed" in report["temperature_fit_on"] and "odd-indexed" in report["temperature_fit_on"]


@pytest.fixture(scope="module")
def tiny_data(tiny_cifar):
    return load_cifar10(tiny_cifar.archive)


def test_gallery_holds_confident_mistakes_and_hits(tiny_data):
    torch.manual_seed(0)
    report, index = evaluate_model(resnet50(), tiny_data.test, dataset="tiny", weights="random init",
                                   device=torch.device("cpu"), show_progress=False)
    assert report["n"] == len(tiny_data.test) and EVALUATION_KEYS <= report.keys()
    json.dumps(report, allow_nan=False)  # strict JSON: no NaN sneaks in
    label, pred = np.array(report["predictions"]["label"]), np.array(report["predictions"]["pred"])
    assert index.dtype == np.int32 and np.all(np.diff(index) > 0)
    assert np.array_equal(label, tiny_data.test.labels)
    assert set(index.tolist()) == set(range(len(label))), "with 3 images per class every image fits in the gallery"
    small = gallery_index(report, per_cell=1, per_class=1)
    pairs = [(label[i], pred[i]) for i in small]
    assert len(pairs) == len(set(pairs)), "one image per (true, predicted) cell"


# ----- the CLI and export -----------------------------------------------------------------------


def test_evaluate_cli_writes_evaluation_and_gallery(tiny_cifar, tiny_data, tmp_path):
    torch.manual_seed(0)
    weights = save_weights(resnet50(), tmp_path / "w.safetensors")
    out = tmp_path / "assets"
    proc = subprocess.run(
        [sys.executable, "-m", "train.evaluate", "--weights", str(weights), "--data", str(tiny_cifar.archive),
         "--out", str(out), "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=ONE_THREAD,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "evaluation.json").read_text())
    assert EVALUATION_KEYS <= report.keys()
    assert report["n"] == len(tiny_data.test) and report["ece_bins"] == 15
    assert report["dataset"].startswith(JPEG_DATASET_NAME) and report["weights"] == "w.safetensors"
    gallery = np.load(out / "test_gallery.npz")
    assert gallery["images"].dtype == np.uint8 and gallery["images"].shape[1:] == (32, 32, 3)
    assert np.array_equal(gallery["images"], tiny_data.test.images[gallery["index"]])


def test_evaluate_cli_takes_a_checkpoint_trained_elsewhere(tiny_cifar, tmp_path):
    """What `app.py --weights theirs.pt --evaluation DIR` needs: an evaluation made for their file."""
    import hashlib

    torch.manual_seed(1)
    theirs = tmp_path / "theirs.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in resnet50().state_dict().items()}}, theirs)
    proc = subprocess.run(
        [sys.executable, "-m", "train.evaluate", "--weights", str(theirs), "--data", str(tiny_cifar.archive),
         "--out", str(tmp_path / "eval"), "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=ONE_THREAD,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["weights"] == "theirs.pt"
    assert report["weights_sha256"] == hashlib.sha256(theirs.read_bytes()).hexdigest()


def test_evaluate_cli_names_a_missing_weights_file(tiny_cifar, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "train.evaluate", "--weights", str(tmp_path / "none.safetensors"),
         "--data", str(tiny_cifar.archive), "--out", str(tmp_path), "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=ONE_THREAD,
    )
    assert proc.returncode == 2 and "No weights file" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "evaluation.json").exists()


@pytest.fixture(scope="module")
def exported(tiny_cifar, tiny_data, tmp_path_factory):
    """One epoch with --export-to, as `python -m train ... --export-to assets` does it."""
    base = tmp_path_factory.mktemp("export")
    cfg = TrainConfig(data=str(tiny_cifar.archive), out=str(base / "run"), export_to=str(base / "assets"),
                      epochs=1, batch_size=10, min_res=8, res_ramp_start=0.5, res_ramp_end=1.0, eval_batch_size=30,
                      replay=True, lesion_images=4)
    result = fit(cfg, data=tiny_data, show_progress=False)
    return base / "assets", result


def test_export_writes_everything_the_app_serves(exported, tiny_data):
    assets, result = exported
    card = json.loads((assets / "model_card.json").read_text())
    evaluation = json.loads((assets / "evaluation.json").read_text())
    history = json.loads((assets / "history.json").read_text())
    assert CARD_KEYS <= card.keys()
    assert {k: card[k] for k in data_contract()} == data_contract()
    assert card["architecture"] == {"name": "ResNet-50", "stem": "cifar", "layers": [3, 4, 6, 3], "parameters": 23_520_842}
    assert card["dataset"] == JPEG_DATASET_NAME and "JPEG q75" in card["notes"]
    assert card["test_accuracy"] == evaluation["accuracy"] and card["test_accuracy_tta"] == evaluation["accuracy_tta"]
    assert card["epochs"] == 1 and card["config"]["epochs"] == 1 and card["training_seconds"] > 0
    assert history["epochs"] == json.loads(json.dumps(result.history))
    samples = sorted(p.name for p in (assets / "samples").iterdir())
    assert samples == sorted(f"{c}_{k}.png" for c in CLASSES for k in range(3))
    first_cat = np.flatnonzero(tiny_data.test.labels == CLASSES.index("cat"))[0]
    assert np.array_equal(np.asarray(Image.open(assets / "samples" / "cat_0.png")), tiny_data.test.images[first_cat])
    assert (assets / "test_gallery.npz").is_file()
    lesions = json.loads((assets / LESIONS_FILE).read_text())
    assert lesions["images"] == 4 and lesions["subset"].startswith("4 test images"), "--lesion-images sizes the study"
    assert lesions["weights_sha256"] == hashlib.sha256((assets / "resnet50_cifar10.safetensors").read_bytes()).hexdigest()


def test_exported_weights_are_the_ema_in_float16_and_load_in_the_app(exported):
    assets, result = exported
    from safetensors import safe_open

    with safe_open(str(assets / "resnet50_cifar10.safetensors"), "pt") as f:
        assert f.get_tensor("conv1.weight").dtype == torch.float16
    model, card = load_pretrained(assets)
    ema = result.model.state_dict()
    saved = load_state_dict(assets / "resnet50_cifar10.safetensors")
    assert torch.equal(saved["fc.weight"], ema["fc.weight"].half().float())
    assert card["weights_from"] == "ema"


def test_export_refuses_an_unfinished_run(tiny_cifar, tiny_data, tmp_path):
    cfg = TrainConfig(data=str(tiny_cifar.archive), out=str(tmp_path / "run"), epochs=1, batch_size=10, min_res=8,
                      stop_after_steps=1)
    fit(cfg, data=tiny_data, show_progress=False)
    with pytest.raises(ExportError, match=r"not finished \(0 of 1 epochs\).*--resume"):
        export_run(tmp_path / "run", tmp_path / "assets", data=tiny_data, device="cpu")
    assert not (tmp_path / "assets").exists()


def test_the_card_names_the_data_set_and_the_timings_not_paths(exported, tiny_cifar):
    assets, result = exported
    card_text = (assets / "model_card.json").read_text()
    history_text = (assets / "history.json").read_text()
    for text in (card_text, history_text):
        assert str(tiny_cifar.archive) not in text and str(assets.parent) not in text, "no path of the training machine"
    card = json.loads(card_text)
    assert card["dataset"] == JPEG_DATASET_NAME and not {"data", "out", "export_to"} & card["config"].keys()
    assert card["torch_version"] == torch.__version__ and card["device"].startswith("CPU")
    assert card["training_seconds"] > 0
    assert card["training_images_per_second"] == pytest.approx(40 / card["training_seconds"])
    assert card["evaluation_precision"].startswith("float32")


@pytest.fixture
def tf32_switched_on():
    """TF32 on, as the trainer leaves it on CUDA, and the process's own settings back afterwards.

    Not monkeypatch.setattr: torch.backends.cuda.matmul is a proxy whose flags live in
    __getattr__/__setattr__, and pytest >= 9.2 undoes a set attribute that was missing from the
    instance's __dict__ by deleting it, which that proxy refuses. Assignment is its only API.
    """
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_the_evaluation_runs_in_float32_whatever_the_trainer_left_switched_on(tiny_data, tf32_switched_on):
    """The card's accuracy is the float32 one: no autocast, and no TF32 even where the trainer enabled it."""
    from torch import nn

    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append((x.dtype, torch.is_autocast_enabled(), torch.backends.cudnn.allow_tf32,
                         torch.backends.cuda.matmul.allow_tf32))
            return torch.arange(10.0).repeat(x.shape[0], 1)

    evaluate_model(Spy(), tiny_data.test, dataset="tiny", weights="spy", device=torch.device("cpu"), show_progress=False)
    assert seen and set(seen) == {(torch.float32, False, False, False)}
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32, "restored afterwards"


def test_export_ships_the_replay_and_the_channel_atlas_of_these_weights(exported, tiny_data):
    from insight.atlas import ATLAS_FILE, load_atlas
    from insight.replay import REPLAY_FILE, load_replay
    from resnet.weights import WEIGHTS_FILE

    assets, result = exported
    replay = load_replay(assets / REPLAY_FILE)
    assert (assets / REPLAY_FILE).read_bytes() == (Path(result.checkpoint).parent / REPLAY_FILE).read_bytes()
    assert list(replay.probe_names) == sorted(p.name for p in (assets / "samples").iterdir())
    card = json.loads((assets / "model_card.json").read_text())
    assert card["replay"]["snapshots"] == len(replay) and card["replay"]["recording_seconds"] > 0
    atlas = load_atlas(assets / ATLAS_FILE)
    digest = hashlib.sha256((assets / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert atlas.meta["weights_sha256"] == digest
    assert not [p for p in assets.iterdir() if p.name.startswith(".export-")], "the staging folder is gone"


def test_a_failing_export_leaves_the_previous_one_intact(exported, tiny_data, tmp_path, monkeypatch):
    import shutil

    import train.export as export

    assets, result = exported
    copy = tmp_path / "assets"
    shutil.copytree(assets, copy)
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}

    def broken(*args, **kwargs):
        raise RuntimeError("the atlas broke")

    monkeypatch.setattr(export, "write_atlas", broken)
    with pytest.raises(RuntimeError, match="the atlas broke"):
        export.export_run(Path(result.checkpoint).parent, copy, data=tiny_data, device="cpu", show_progress=False)
    after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert after == before and not [p for p in copy.iterdir() if p.name.startswith(".export-")]
