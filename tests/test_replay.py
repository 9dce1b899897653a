"""Spec for the training replay (insight.replay): when snapshots are taken, what one holds,
that its Grad-CAM is Captum's, that recording leaves the model as it was, and that the
file is compact, written atomically, survives a checkpoint and is refused with a sentence
when it is missing, damaged or inconsistent.

Runs on random ResNet-50s (seeded) and the shipped sample images, never on the shipped
weights.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import nonidentity_resnet50
from insight import anatomy, gradcam, replay
from insight.replay import CAM_KEYS, REPLAY_FILE, ReplayError, ReplayRecorder, load_replay, probe_snapshot, record_steps
from resnet import CLASSES, NUM_CLASSES, STAGE_NAMES, resnet50
from resnet.preprocess import images_to_pixels, normalise

ROOT = Path(__file__).resolve().parent.parent
SIDES = {"layer1": 32, "layer2": 16, "layer3": 8, "layer4": 4}


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_torch_thread):
    """One torch thread for the whole module (conftest's ``single_torch_thread``)."""


@pytest.fixture(scope="module")
def probes():
    """The 30 shipped sample images, in the explorer's order, with their classes."""
    names, images, labels = replay.probe_samples(ROOT / "assets" / "samples")
    return names, images, labels


@pytest.fixture(scope="module")
def model(single_torch_thread):
    # A small readout keeps the random net's softmax unsaturated, so classes differ in probability.
    return nonidentity_resnet50(seed=0, readout_scale=0.1)


@pytest.fixture(scope="module")
def few(probes):
    """Six probes, two per class for three classes: enough to batch, cheap to compute."""
    names, images, labels = probes
    rows = [0, 1, 9, 10, 24, 25]
    return [names[i] for i in rows], images[rows], [labels[i] for i in rows]


@pytest.fixture(scope="module")
def snap(model, few):
    _, images, labels = few
    return probe_snapshot(model, images, labels)


def model_input(images: np.ndarray) -> torch.Tensor:
    return normalise(images_to_pixels(images))


# ----- when to record -----------------------------------------------------------------------


def test_record_steps_start_at_the_initialisation_and_are_log_spaced_through_the_first_epoch():
    steps = record_steps(97)  # 50,000 images in batches of 512
    assert steps == [0, 1, 2, 3, 6, 10, 17, 31, 55]
    gaps = np.diff(steps[1:])
    assert (np.diff(gaps) >= 0).all(), "later snapshots are further apart"


def test_record_steps_never_reach_the_end_of_the_epoch_and_shrink_with_tiny_epochs():
    assert record_steps(1) == [0]
    assert record_steps(3) == [0, 1, 2]
    assert record_steps(500, n_early=0) == [0]
    for spe in (2, 7, 50, 97, 391, 5000):
        for n in (1, 4, 8, 20):
            steps = record_steps(spe, n)
            assert steps[0] == 0 and steps == sorted(set(steps))
            assert max(steps) < spe and len(steps) <= n + 1


@pytest.mark.parametrize("args", [(0,), (-3,), (2.5,), (True,), (10, -1)])
def test_record_steps_refuse_nonsense(args):
    with pytest.raises(ValueError):
        record_steps(*args)


# ----- one snapshot -------------------------------------------------------------------------


def test_snapshot_holds_probabilities_cams_ratios_and_gammas_of_the_right_shapes(snap, few):
    n = len(few[0])
    assert snap["probs"].shape == (n, NUM_CLASSES) and snap["probs"].dtype == np.float32
    assert snap["pred"].shape == (n,)
    assert snap["block_ratios"].shape == (n, 16) and snap["bn3_gamma"].shape == (16,)
    for target in ("pred", "true"):
        for stage in STAGE_NAMES:
            cam = snap[f"cam_{target}.{stage}"]
            assert cam.shape == (n, SIDES[stage], SIDES[stage]) and cam.dtype == np.float32
            assert np.isfinite(cam).all() and (cam >= 0).all()
    assert all(snap[k].max() > 0 for k in CAM_KEYS)
    assert all(isinstance(v, np.ndarray) for v in snap.values()), "no tensor (and so no graph) is handed back"


def test_snapshot_numbers_are_what_the_model_says(model, snap, few):
    _, images, _ = few
    x = model_input(images)
    with torch.no_grad():
        probs = torch.softmax(model(x), 1).numpy()
    np.testing.assert_allclose(snap["probs"], probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(snap["pred"], probs.argmax(1))
    for i in range(len(images)):
        expected = anatomy.residual_anatomy(model, x[i : i + 1]).ratios
        np.testing.assert_allclose(snap["block_ratios"][i], expected, rtol=1e-4)
    gammas = [float(b.bn3.weight.detach().abs().mean()) for b in model.blocks().values()]
    np.testing.assert_allclose(snap["bn3_gamma"], gammas, rtol=1e-6)


@pytest.mark.parametrize("target", ["pred", "true"])
def test_snapshot_gradcam_equals_captum_layergradcam(model, snap, few, target):
    _, images, labels = few
    x = model_input(images)
    for i in (0, 3, 5):
        explained = int(snap["pred"][i]) if target == "pred" else labels[i]
        reference = gradcam.analyze(model, x[i : i + 1], explained).cams
        alone = probe_snapshot(model, images[i : i + 1], [labels[i]])
        for stage in STAGE_NAMES:
            # One image at a time it is Captum's arithmetic exactly; in a batch, convolutions sum in
            # another order and the gradients differ by float rounding only.
            np.testing.assert_array_equal(alone[f"cam_{target}.{stage}"][0], reference[stage])
            top = float(reference[stage].max())
            np.testing.assert_allclose(snap[f"cam_{target}.{stage}"][i], reference[stage], rtol=0, atol=1e-3 * top)


def test_at_the_zero_initialised_start_every_block_is_an_identity(few):
    _, images, labels = few
    torch.manual_seed(0)
    snap = probe_snapshot(resnet50(), images, labels)
    np.testing.assert_array_equal(snap["bn3_gamma"], 0.0)
    np.testing.assert_array_equal(snap["block_ratios"], 0.0)


def test_snapshot_leaves_the_model_as_it_found_it(few):
    _, images, labels = few
    model = nonidentity_resnet50(seed=1, readout_scale=0.1)
    model.train()
    model.layer2.eval()  # mixed modes must come back mixed
    model.fc.requires_grad_(False)
    modes = {name: m.training for name, m in model.named_modules()}
    wants_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    snap = probe_snapshot(model, images[:2], labels[:2])
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == wants_grad
    assert all(p.grad is None for p in model.parameters()), "no gradient lands on a weight"
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed: BatchNorm must run in eval mode"
    # In eval mode, whatever the mode it was found in.
    with torch.no_grad():
        probs = torch.softmax(model.eval()(model_input(images[:2])), 1).numpy()
    np.testing.assert_allclose(snap["probs"], probs, rtol=1e-5, atol=1e-6)


def test_snapshot_is_float32_inside_autocast_and_inference_mode(model, snap, few):
    _, images, labels = few
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = probe_snapshot(model, images, labels)
    with torch.inference_mode():
        under_inference = probe_snapshot(model, torch.from_numpy(images), torch.tensor(labels))
    for other in (under_autocast, under_inference):
        for key, value in snap.items():
            assert other[key].dtype == value.dtype
            np.testing.assert_allclose(other[key], value, rtol=1e-5, atol=1e-7 * max(1.0, float(np.abs(value).max())))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_snapshot_on_cuda_matches_the_cpu(model, snap, few):
    import copy

    _, images, labels = few
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    on_gpu = probe_snapshot(copy.deepcopy(model).cuda(), torch.from_numpy(images).cuda(), labels)
    for key, value in snap.items():
        np.testing.assert_allclose(on_gpu[key], value, rtol=1e-3, atol=1e-5 * max(1.0, float(np.abs(value).max())))


def test_snapshot_refuses_images_that_are_not_uint8_rgb_and_wrong_labels(model, few):
    _, images, labels = few
    with pytest.raises(ValueError, match="uint8"):
        probe_snapshot(model, images.astype(np.float32), labels)
    with pytest.raises(ValueError, match="one label per probe"):
        probe_snapshot(model, images, labels[:-1])
    with pytest.raises(ValueError, match="0..9"):
        probe_snapshot(model, images, [10] * len(labels))


# ----- the recorder -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recorded(model, snap, few):
    """A short recording: the zero-initialised start, two later states, two evaluations."""
    names, images, labels = few
    torch.manual_seed(0)
    start = probe_snapshot(resnet50(), images, labels)
    later = probe_snapshot(nonidentity_resnet50(seed=2, readout_scale=0.1), images, labels)
    rec = ReplayRecorder(names, labels)
    rec.add_snapshot(start, step=0, epoch=0.0, images_seen=0)
    rec.add_snapshot(snap, step=3, epoch=0.3, images_seen=384)
    rec.add_epoch_eval(1, np.array([0, 1, 2, 3, 3, 5]), np.array([0, 1, 1, 3, 5, 5]))
    rec.add_snapshot(later, step=10, epoch=1.0, images_seen=1280)
    rec.add_epoch_eval(2, np.array([0, 1, 2, 3, 3, 5]), np.array([0, 1, 2, 3, 3, 5]))
    return rec, [start, snap, later]


def test_recorder_survives_a_checkpoint_read_with_weights_only(recorded):
    rec, _ = recorded
    buffer = io.BytesIO()
    torch.save({"replay": rec.state_dict()}, buffer)
    buffer.seek(0)
    back = ReplayRecorder.from_state_dict(torch.load(buffer, weights_only=True)["replay"])
    assert back.to_bytes() == rec.to_bytes()
    assert len(back) == len(rec) == 3


def test_an_empty_recorder_round_trips_too(few):
    names, _, labels = few
    rec = ReplayRecorder(names, labels)
    back = ReplayRecorder.from_state_dict(rec.state_dict())
    assert len(back) == 0 and back.probe_names == names


def test_saved_replay_reads_back_what_was_recorded(recorded, few, tmp_path):
    rec, snaps = recorded
    names, _, labels = few
    rec.save(tmp_path / REPLAY_FILE)
    r = load_replay(tmp_path / REPLAY_FILE)
    assert r.probe_names == tuple(names) and r.probe_labels.tolist() == labels
    assert r.step.tolist() == [0, 3, 10] and r.epoch.tolist() == [0.0, 0.3, 1.0]
    assert r.images_seen.tolist() == [0, 384, 1280]
    for s, snap in enumerate(snaps):
        np.testing.assert_allclose(r.probs[s], snap["probs"], atol=1e-3)  # float16
        np.testing.assert_array_equal(r.pred[s], snap["pred"])
        np.testing.assert_allclose(r.block_ratios[s], snap["block_ratios"], rtol=1e-3, atol=1e-6)
        np.testing.assert_array_equal(r.bn3_gamma[s], snap["bn3_gamma"])
        for p in range(len(names)):
            cams = r.cams(s, p)
            for target in ("pred", "true"):
                for stage in STAGE_NAMES:
                    original = snap[f"cam_{target}.{stage}"][p]
                    # Quantised on each map's own maximum: off by at most half a level.
                    tol = float(original.max()) / replay.CAM_LEVELS / 2 * 1.001 + 1e-12
                    assert np.abs(cams[target][stage] - original).max() <= tol
    np.testing.assert_array_equal(r.eval_epoch, [1, 2])
    assert r.confusion[0].sum() == 6 and r.confusion[0][2, 1] == 1 and r.confusion[0][3, 5] == 1
    acc = r.per_class_accuracy()
    assert acc[0][3] == 0.5 and acc[0][2] == 0.0 and acc[1][[0, 1, 2, 3, 5]].tolist() == [1.0] * 5


def test_the_true_class_map_of_a_right_prediction_is_the_predicted_class_map(recorded, tmp_path):
    rec, snaps = recorded
    rec.save(tmp_path / REPLAY_FILE)
    r = load_replay(tmp_path / REPLAY_FILE)
    right = [(s, p) for s in range(len(r)) for p in range(len(r.probe_names)) if r.pred[s, p] == r.probe_labels[p]]
    assert right, "the fixture has right predictions"
    for s, p in right:
        cams = r.cams(s, p)
        for stage in STAGE_NAMES:
            np.testing.assert_array_equal(cams["true"][stage], cams["pred"][stage])


def test_a_step_recorded_again_replaces_it_and_time_never_runs_backwards(recorded, snap, few):
    rec, _ = recorded
    again = ReplayRecorder.from_state_dict(rec.state_dict())
    again.add_snapshot(snap, step=10, epoch=1.0, images_seen=1280)  # a resumed run takes step 10 again
    assert len(again) == 3
    with pytest.raises(ValueError, match="training order"):
        again.add_snapshot(snap, step=5, epoch=0.5, images_seen=640)
    again.add_epoch_eval(2, np.zeros(4, int), np.zeros(4, int))
    assert [e for e, _ in again.evals] == [1, 2] and again.evals[1][1].sum() == 4


def test_recorder_refuses_snapshots_that_do_not_fit_its_probes(snap, few):
    names, _, labels = few
    rec = ReplayRecorder(names, labels)
    with pytest.raises(ValueError, match="lacks"):
        rec.add_snapshot({"probs": snap["probs"]}, step=0, epoch=0, images_seen=0)
    fewer = {k: (v[:3] if k != "bn3_gamma" else v) for k, v in snap.items()}
    with pytest.raises(ValueError, match="probes need"):
        rec.add_snapshot(fewer, step=0, epoch=0, images_seen=0)
    broken = dict(snap, probs=np.full_like(snap["probs"], np.nan))
    with pytest.raises(ValueError, match="NaN"):
        rec.add_snapshot(broken, step=0, epoch=0, images_seen=0)
    with pytest.raises(ValueError, match="one label per probe"):
        ReplayRecorder(names, labels[:-1])
    with pytest.raises(ValueError, match="one prediction per"):
        rec.add_epoch_eval(1, np.zeros(3, int), np.zeros(4, int))
    with pytest.raises(ValueError, match="class indices"):
        rec.add_epoch_eval(1, np.full(3, 10), np.zeros(3, int))


def test_saving_twice_gives_the_same_bytes(recorded, tmp_path):
    rec, _ = recorded
    rec.save(tmp_path / "a.npz")
    rec.save(tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def _dihedral(cam: np.ndarray, k: int) -> np.ndarray:
    turned = np.rot90(cam, k % 4)
    return np.fliplr(turned) if k >= 4 else turned


def test_sixty_snapshots_of_thirty_probes_fit_in_three_megabytes(model, probes):
    """The worst case for the file: every prediction wrong, so no true-class map is shared with the
    predicted one, and no two snapshots alike. The maps are real Grad-CAMs of two networks, each one
    turned or mirrored and given a gamma of its own per snapshot, so no map repeats byte for byte
    while keeping a Grad-CAM's structure (a quarter to a half of its cells zero, smooth elsewhere)."""
    names, images, labels = probes
    bases = [probe_snapshot(model, images, labels), probe_snapshot(nonidentity_resnet50(seed=3, readout_scale=0.1), images, labels)]
    rng = np.random.default_rng(0)
    rec = ReplayRecorder(names, labels)
    for i in range(60):
        snap = dict(bases[i % 2])
        snap["pred"] = (np.asarray(labels) + 1 + i % 9) % NUM_CLASSES
        for key in CAM_KEYS:
            turns, gammas = rng.integers(0, 8, len(names)), rng.uniform(0.8, 1.25, len(names))
            snap[key] = np.stack([_dihedral(cam, k) ** g for cam, k, g in zip(snap[key], turns, gammas)])
        snap["probs"] = rng.dirichlet(np.ones(NUM_CLASSES), len(names)).astype(np.float32)
        snap["block_ratios"] = rng.uniform(0, 2, snap["block_ratios"].shape).astype(np.float32)
        rec.add_snapshot(snap, step=i, epoch=i / 10, images_seen=512 * i)
    size = len(rec.to_bytes())
    assert size <= 3_000_000, f"{size:,} bytes for 60 snapshots"


def test_save_is_atomic_a_failed_write_leaves_the_old_file(recorded, few, tmp_path, monkeypatch):
    rec, _ = recorded
    path = tmp_path / REPLAY_FILE
    rec.save(path)
    before = path.read_bytes()
    names, _, labels = few
    other = ReplayRecorder(names, labels)

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        other.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [REPLAY_FILE], "no temp file is left behind"
    assert len(load_replay(path)) == 3


# ----- refusing bad files -------------------------------------------------------------------


def _rewrite(path: Path, **changes) -> None:
    """Rewrite a saved replay with some arrays replaced (None drops one)."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    path.write_bytes(replay._npz_bytes(arrays))


@pytest.fixture
def saved(recorded, tmp_path) -> Path:
    path = tmp_path / REPLAY_FILE
    recorded[0].save(path)
    return path


def _refused(path: Path, *words: str) -> ReplayError:
    with pytest.raises(ReplayError) as info:
        load_replay(path)
    message = str(info.value)
    assert isinstance(info.value, ValueError) and message.endswith(".")
    assert path.name in message
    for word in words:
        assert word in message, message
    return info.value


def test_a_missing_replay_says_so(tmp_path):
    err = _refused(tmp_path / REPLAY_FILE, "not available", "python -m train")
    assert err.missing


def test_a_damaged_replay_is_refused_with_a_sentence(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    assert not _refused(saved, "not a readable replay").missing
    saved.write_bytes(b"this is not a zip archive at all\n" * 4)
    _refused(saved, "not a readable replay")


def test_a_replay_holding_pickles_is_refused(saved):
    buffer = io.BytesIO()
    np.savez(buffer, format=np.array(1), probe_names=np.array([object()], dtype=object))
    saved.write_bytes(buffer.getvalue())
    _refused(saved, "not a readable replay")


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"step": None}, ["lacks step"]),
        ({"format": np.array(99)}, ["format 1"]),
        ({"step": np.array([0, 10, 3])}, ["not increasing"]),
        ({"probs": np.zeros((2, 6, 10), np.float16)}, ["probs", "3 snapshots"]),
        ({"cam_pred.layer1": np.zeros((3, 6, 16, 16), np.uint8)}, ["cam_pred.layer1"]),
        ({"probe_labels": np.array([0, 0, 3, 3, 12, 8], np.uint8)}, ["probe set"]),
        ({"confusion": np.zeros((1, 10, 10), np.int64)}, ["confusion"]),
        ({"bn3_gamma": np.full((3, 16), np.inf, np.float32)}, ["NaN or infinite bn3_gamma"]),
    ],
)
def test_an_inconsistent_replay_is_refused_naming_the_problem(saved, changes, words):
    _rewrite(saved, **changes)
    _refused(saved, *words)


def test_a_replay_without_snapshots_is_refused(few, tmp_path):
    names, _, labels = few
    ReplayRecorder(names, labels).save(tmp_path / REPLAY_FILE)
    _refused(tmp_path / REPLAY_FILE, "no snapshot")


# ----- what the explorer reads ----------------------------------------------------------------


def test_snapshot_labels_say_when_and_how_many_images(recorded, tmp_path):
    recorded[0].save(tmp_path / REPLAY_FILE)
    r = load_replay(tmp_path / REPLAY_FILE)
    assert r.label(0) == "initialisation (step 0, no image seen yet)"
    assert r.label(1) == "epoch 0.30 (step 3, 384 images seen)"
    assert r.label(2) == "end of epoch 1 (step 10, 1,280 images seen)"


def test_view_is_json_and_holds_the_numbers_of_one_probe_at_one_snapshot(recorded, few, tmp_path):
    recorded[0].save(tmp_path / REPLAY_FILE)
    r = load_replay(tmp_path / REPLAY_FILE)
    names, _, labels = few
    v = json.loads(json.dumps(r.view(names[2], 2)))
    assert v["sample"] == names[2] and v["true_class"] == CLASSES[labels[2]]
    assert v["snapshot"] == {"index": 2, "count": 3, "step": 10, "epoch": 1.0, "images_seen": 1280, "label": r.label(2)}
    assert list(v["probs"]) == list(CLASSES)
    np.testing.assert_allclose(list(v["probs"].values()), r.probs[2, 2])
    assert v["predicted_class"] == CLASSES[int(r.pred[2, 2])]
    for target in ("pred", "true"):
        for stage in STAGE_NAMES:
            np.testing.assert_allclose(np.array(v["cams"][target][stage]), r.cams(2, 2)[target][stage])
    assert list(v["block_ratios"]) == list(replay.BLOCK_NAMES) and len(v["bn3_gamma"]) == 16
    assert v["evaluation"]["epoch"] == 1 and v["evaluation"]["images"] == 6
    assert v["evaluation"]["confusion_matrix"] == r.confusion[0].tolist()
    np.testing.assert_allclose(v["over_training"]["probs"]["cat"], r.probs[:, 2, CLASSES.index("cat")])
    assert v["over_epochs"]["epoch"] == [1, 2] and v["over_epochs"]["per_class_accuracy"]["cat"] == [0.5, 1.0]
    assert r.view(names[2], 1)["evaluation"] is None, "no evaluation before the end of the first epoch"


@pytest.mark.parametrize("snapshot", [-1, 3, 1.5, "two", None])
def test_view_refuses_a_snapshot_outside_the_replay(recorded, few, tmp_path, snapshot):
    recorded[0].save(tmp_path / REPLAY_FILE)
    r = load_replay(tmp_path / REPLAY_FILE)
    with pytest.raises(ValueError, match="from 0 to 2"):
        r.view(few[0][0], snapshot)


def test_view_refuses_an_image_that_is_not_a_probe(recorded, tmp_path):
    recorded[0].save(tmp_path / REPLAY_FILE)
    r = load_replay(tmp_path / REPLAY_FILE)
    with pytest.raises(ValueError, match="not one of the 6 probe images"):
        r.view("my_holiday.jpg", 0)


def test_probe_samples_are_the_shipped_samples_in_class_order(probes):
    names, images, labels = probes
    assert len(names) == 30 and images.shape == (30, 32, 32, 3) and images.dtype == np.uint8
    assert names[:3] == ["airplane_0.png", "airplane_1.png", "airplane_2.png"] and names[9] == "cat_0.png"
    assert labels == [k for k in range(NUM_CLASSES) for _ in range(3)]


# ----- the /training_replay endpoint ----------------------------------------------------------


def synthetic_replay(folder: Path, n_epochs: int = 6, steps_per_epoch: int = 10, seed: int = 0) -> Path:
    """A replay of the shipped samples with made-up but well-formed numbers, written to ``folder``.

    The shipped CPU weights come without a replay; the app tests need one. Each snapshot's maps
    and probabilities differ, the true class gains probability as training goes on, and there is
    one evaluation per epoch.
    """
    names, _, labels = replay.probe_samples(ROOT / "assets" / "samples")
    rng = np.random.default_rng(seed)
    rec = ReplayRecorder(names, labels)
    steps = record_steps(steps_per_epoch, 3) + [steps_per_epoch * (e + 1) for e in range(n_epochs)]
    y = np.asarray(labels)
    for step in steps:
        progress = step / (steps_per_epoch * n_epochs)
        logits = rng.normal(0, 1, (len(names), NUM_CLASSES))
        logits[np.arange(len(names)), y] += 5 * progress
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        snap = {
            "probs": probs.astype(np.float32), "pred": probs.argmax(1),
            "block_ratios": rng.uniform(0, 2 * progress + 1e-3, (len(names), 16)).astype(np.float32),
            "bn3_gamma": (np.linspace(0.05, 0.4, 16) * progress).astype(np.float32),
        }
        for key in CAM_KEYS:
            side = SIDES[key.split(".")[1]]
            snap[key] = np.maximum(rng.normal(0, 1, (len(names), side, side)), 0).astype(np.float32)
        rec.add_snapshot(snap, step=step, epoch=step / steps_per_epoch, images_seen=step * 128)
        if step and step % steps_per_epoch == 0:
            truth = np.repeat(np.arange(NUM_CLASSES), 20)
            wrong = rng.random(truth.size) > 0.3 + 0.1 * (step // steps_per_epoch)
            rec.add_epoch_eval(step // steps_per_epoch, truth, np.where(wrong, (truth + 1) % NUM_CLASSES, truth))
    path = folder / REPLAY_FILE
    rec.save(path)
    return path


def assets_with(folder: Path, replay_file: bool = True) -> Path:
    """A private assets folder: the shipped weights, card and samples, plus a synthetic replay."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("resnet50_cifar10.safetensors", "model_card.json"):
        (folder / name).symlink_to(ROOT / "assets" / name)
    # Copied, not linked: the server serves the examples only from inside its assets folder.
    shutil.copytree(ROOT / "assets" / "samples", folder / "samples")
    if replay_file:
        synthetic_replay(folder)
    return folder


@pytest.fixture(scope="module")
def replay_client(tmp_path_factory):
    from gradio_client import Client

    from conftest import start_app

    assets = assets_with(tmp_path_factory.mktemp("assets"))
    with start_app(tmp_path_factory.mktemp("log"), EXPLORER_ASSETS_DIR=str(assets)) as url:
        yield Client(url, verbose=False), load_replay(assets / REPLAY_FILE), assets / REPLAY_FILE


def test_training_replay_answers_the_numbers_of_the_replay_file(replay_client):
    client, r, _ = replay_client
    for name, index in (("cat_0.png", 0), ("ship_2.png", len(r) - 1), ("dog_1.png", 4.0)):
        answer = client.predict(name, index, api_name="/training_replay")
        expected = json.loads(json.dumps(r.view(name, index)))
        dataset = answer["over_epochs"].pop("dataset")
        assert dataset == json.loads((ROOT / "assets" / "model_card.json").read_text())["dataset"]
        if answer["evaluation"] is not None:
            assert answer["evaluation"].pop("dataset") == dataset
        assert answer == expected


def test_training_replay_refuses_what_is_not_in_the_replay_with_a_sentence(replay_client):
    from gradio_client.exceptions import AppError

    client, r, _ = replay_client
    with pytest.raises(AppError, match="not one of the 30 probe images"):
        client.predict("my_holiday.jpg", 0, api_name="/training_replay")
    with pytest.raises(AppError, match=f"from 0 to {len(r) - 1}"):
        client.predict("cat_0.png", len(r), api_name="/training_replay")
    with pytest.raises(AppError, match="whole number"):
        client.predict("cat_0.png", 1.5, api_name="/training_replay")


def test_training_replay_is_named_and_its_glue_stays_private(replay_client):
    client, _, _ = replay_client
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert "/training_replay" in names
    assert not {n for n in names if n.startswith("/replay_")}


def test_without_a_replay_file_the_endpoint_says_so(replay_client, tmp_path):
    from gradio_client.exceptions import AppError

    client, _, path = replay_client
    path.rename(tmp_path / REPLAY_FILE)  # the server reads the file afresh when it changes
    try:
        with pytest.raises(AppError, match="replay.npz. is not available"):
            client.predict("cat_0.png", 0, api_name="/training_replay")
    finally:
        (tmp_path / REPLAY_FILE).rename(path)
    assert client.predict("cat_0.png", 0, api_name="/training_replay")["sample"] == "cat_0.png"
