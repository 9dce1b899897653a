"""The test-set explorer reads train.evaluate's two files and turns them into dropdowns and galleries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from resnet.constants import CLASSES, NUM_CLASSES
from resnet.testset import (
    EVALUATION_FILE,
    GALLERY_FILE,
    TestSet,
    TestSetError,
    accuracy_summary,
    confusion_pairs,
    gallery,
    gallery_summary,
    load_evaluation,
    most_confused_pair,
    pair_choices,
    pair_label,
    parse_pair,
)

CAT, DOG, TRUCK, AUTOMOBILE = (CLASSES.index(c) for c in ("cat", "dog", "truck", "automobile"))


def reliability(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> dict[str, list]:
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    safe = np.maximum(count, 1)
    return {
        "bin_lower": edges[:-1].tolist(),
        "bin_upper": edges[1:].tolist(),
        "confidence": (np.bincount(which, conf, n_bins) / safe).tolist(),
        "accuracy": (np.bincount(which, correct.astype(float), n_bins) / safe).tolist(),
        "count": count.tolist(),
    }


def make_evaluation(seed: int = 0, per_class: int = 8, temperature: bool = True) -> dict[str, Any]:
    """A small, self-consistent evaluation: 8 images per class, with cat->dog the most common mistake."""
    rng = np.random.default_rng(seed)
    label = np.repeat(np.arange(NUM_CLASSES), per_class)
    pred = label.copy()
    cats = np.flatnonzero(label == CAT)
    pred[cats[:4]] = DOG  # 4 cats called dogs
    pred[np.flatnonzero(label == DOG)[:2]] = CAT  # 2 dogs called cats
    pred[np.flatnonzero(label == TRUCK)[:1]] = AUTOMOBILE  # 1 truck called automobile
    confidence = rng.uniform(0.3, 1.0, len(label))
    true_prob = np.where(pred == label, confidence, rng.uniform(0.0, 1.0 - confidence))
    correct = pred == label
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=int)
    np.add.at(cm, (label, pred), 1)
    rel = reliability(confidence, correct)
    ev = {
        "dataset": "synthetic",
        "weights": "none",
        "n": int(len(label)),
        "accuracy": float(correct.mean()),
        "accuracy_tta": None,
        "per_class_accuracy": (np.diag(cm) / cm.sum(1)).tolist(),
        "confusion_matrix": cm.tolist(),
        "ece": 0.05,
        "ece_bins": 15,
        "reliability": rel,
        "predictions": {
            "label": label.tolist(),
            "pred": pred.tolist(),
            "confidence": confidence.tolist(),
            "true_class_prob": true_prob.tolist(),
        },
    }
    if temperature:
        ev.update(temperature=1.5, temperature_fit_on="5,000 held-out training images",
                  ece_after_temperature=0.02, reliability_after_temperature=reliability(confidence * 0.9, correct))
    return ev


def write_assets(folder: Path, ev: dict[str, Any] | None = None, correct_per_class: int = 3) -> dict[str, Any]:
    """evaluation.json + test_gallery.npz shipping every mistake and a few correct images per class."""
    ev = make_evaluation() if ev is None else ev
    folder.mkdir(parents=True, exist_ok=True)
    (folder / EVALUATION_FILE).write_text(json.dumps(ev))
    label = np.asarray(ev["predictions"]["label"])
    pred = np.asarray(ev["predictions"]["pred"])
    rows = list(np.flatnonzero(label != pred))
    for k in range(NUM_CLASSES):
        rows += list(np.flatnonzero((label == k) & (pred == k))[:correct_per_class])
    rows = np.array(sorted(rows), dtype=np.int32)
    # Each image encodes its own row in its first pixel, so a test can see which one came back.
    images = np.zeros((len(rows), 32, 32, 3), np.uint8)
    images[:, 0, 0, 0] = rows % 256
    images[:, 0, 0, 1] = rows // 256
    np.savez_compressed(folder / GALLERY_FILE, images=images, index=rows)
    return ev


@pytest.fixture
def assets(tmp_path: Path) -> Path:
    write_assets(tmp_path)
    return tmp_path


def test_confusion_pairs_are_the_off_diagonal_mistakes_most_frequent_first() -> None:
    ev = make_evaluation()
    pairs = confusion_pairs(ev)
    assert pairs == [(CAT, DOG, 4), (DOG, CAT, 2), (TRUCK, AUTOMOBILE, 1)]
    assert all(t != p for t, p, _ in pairs)
    assert most_confused_pair(ev) == (CAT, DOG, 4)


def test_a_perfect_model_has_no_confused_pair() -> None:
    ev = {"confusion_matrix": (np.eye(NUM_CLASSES, dtype=int) * 5).tolist()}
    assert confusion_pairs(ev) == []
    assert most_confused_pair(ev) is None


def test_pair_labels_read_like_the_dropdown_and_round_trip() -> None:
    assert pair_label(CAT, DOG, 123) == "cat -> dog (123)"
    assert pair_label(CAT, CAT, 870) == "cat -> cat (870 correct)"
    choices = pair_choices(make_evaluation())
    assert choices[0] == ("cat -> dog (4)", f"{CAT},{DOG}")
    assert len(choices) == 3 + NUM_CLASSES
    assert [parse_pair(v) for _, v in choices[:3]] == [(CAT, DOG), (DOG, CAT), (TRUCK, AUTOMOBILE)]
    assert len(pair_choices(make_evaluation(), include_correct=False)) == 3


@pytest.mark.parametrize("bad", ["", "3", "a,b", "3,10", "-1,2", "1,2,3"])
def test_parse_pair_refuses_anything_but_two_class_indices(bad: str) -> None:
    with pytest.raises(TestSetError):
        parse_pair(bad)


def test_constructing_a_testset_reads_nothing(tmp_path: Path) -> None:
    ts = TestSet(tmp_path / "nowhere")  # no error until a tab asks
    with pytest.raises(TestSetError, match="python -m train.evaluate"):
        ts.evaluation
    assert "python -m train.evaluate" in ts.available()


def test_missing_gallery_says_how_to_make_it(tmp_path: Path) -> None:
    write_assets(tmp_path)
    (tmp_path / GALLERY_FILE).unlink()
    ts = TestSet(tmp_path)
    assert ts.evaluation["n"] == 80  # the JSON alone still serves the matrix and calibration
    with pytest.raises(TestSetError, match="train.evaluate"):
        ts.images


def test_gallery_is_sorted_by_confidence_and_holds_only_the_asked_pair(assets: Path) -> None:
    ts = TestSet(assets)
    items = gallery(ts, CAT, DOG)
    p = ts.evaluation["predictions"]
    assert len(items) == 4
    confidences = [p["confidence"][it.row] for it in items]
    assert confidences == sorted(confidences, reverse=True)
    for it in items:
        assert (p["label"][it.row], p["pred"][it.row]) == (CAT, DOG)
        assert it.image.shape == (32, 32, 3) and it.image.dtype == np.uint8
        assert int(it.image[0, 0, 0]) + 256 * int(it.image[0, 0, 1]) == it.row  # the right picture
        assert f"{p['confidence'][it.row]:.1%}" in it.caption and "dog" in it.caption and "cat" in it.caption
        assert np.array_equal(ts.image(it.row), it.image)
    assert [it.row for it in gallery(ts, CAT, DOG, limit=2)] == [it.row for it in items[:2]]


def test_gallery_of_the_diagonal_gives_correct_images(assets: Path) -> None:
    ts = TestSet(assets)
    items = gallery(ts, DOG, DOG)
    assert len(items) == 3
    assert all(ts.record(it.row)["correct"] for it in items)
    assert gallery(ts, DOG, TRUCK) == []
    assert "showing the 3 shipped" in gallery_summary(ts, DOG, DOG)


def test_record_describes_one_test_image(assets: Path) -> None:
    ts = TestSet(assets)
    row = gallery(ts, CAT, DOG)[0].row
    rec = ts.record(row)
    assert (rec["label_name"], rec["pred_name"], rec["correct"]) == ("cat", "dog", False)
    assert 0 <= rec["true_class_prob"] <= 1
    with pytest.raises(TestSetError):
        ts.record(10_000)


def test_an_image_that_was_not_shipped_gets_a_clear_error(assets: Path) -> None:
    ts = TestSet(assets)
    unshipped = next(r for r in range(ts.evaluation["n"]) if not ts.has_image(r))
    with pytest.raises(TestSetError, match="not in"):
        ts.image(unshipped)


def _corrupt(ev: dict[str, Any], what: str) -> dict[str, Any]:
    ev = json.loads(json.dumps(ev))
    if what == "matrix_shape":
        ev["confusion_matrix"] = ev["confusion_matrix"][:9]
    elif what == "matrix_sum":
        ev["confusion_matrix"][0][0] += 1
    elif what == "matrix_vs_predictions":
        # Same total, but one image moved to another cell.
        ev["confusion_matrix"][0][0] -= 1
        ev["confusion_matrix"][0][1] += 1
    elif what == "pred_range":
        ev["predictions"]["pred"][0] = NUM_CLASSES
    elif what == "short_confidence":
        ev["predictions"]["confidence"] = ev["predictions"]["confidence"][:-1]
    elif what == "confidence_range":
        ev["predictions"]["confidence"][0] = 1.5
    elif what == "missing_key":
        del ev["reliability"]
    elif what == "reliability_lengths":
        ev["reliability"]["count"] = ev["reliability"]["count"][:-1]
    return ev


@pytest.mark.parametrize("what", ["matrix_shape", "matrix_sum", "matrix_vs_predictions", "pred_range",
                                  "short_confidence", "confidence_range", "missing_key", "reliability_lengths"])
def test_an_inconsistent_evaluation_is_refused_with_the_fix(tmp_path: Path, what: str) -> None:
    path = tmp_path / EVALUATION_FILE
    path.write_text(json.dumps(_corrupt(make_evaluation(), what)))
    with pytest.raises(TestSetError, match="train.evaluate"):
        load_evaluation(path)


def test_unreadable_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / EVALUATION_FILE
    path.write_text("{not json")
    with pytest.raises(TestSetError, match="not readable JSON"):
        load_evaluation(path)


@pytest.mark.parametrize("what", ["dtype", "shape", "index_range", "duplicate", "missing_array"])
def test_a_bad_gallery_is_refused(tmp_path: Path, what: str) -> None:
    write_assets(tmp_path)
    with np.load(tmp_path / GALLERY_FILE) as d:
        images, index = d["images"], d["index"]
    arrays = {"images": images, "index": index}
    if what == "dtype":
        arrays["images"] = images.astype(np.float32)
    elif what == "shape":
        arrays["images"] = images[:, :16]
    elif what == "index_range":
        arrays["index"] = index + 1000
    elif what == "duplicate":
        arrays["index"] = np.r_[index[:1], index[:-1]]
    else:
        del arrays["index"]
    np.savez_compressed(tmp_path / GALLERY_FILE, **arrays)
    with pytest.raises(TestSetError):
        TestSet(tmp_path).images


def test_summary_names_the_worst_class_and_the_temperature_data(assets: Path) -> None:
    s = accuracy_summary(TestSet(assets).evaluation)
    assert s["worst_class"] == "cat"
    assert s["most_confused"] == "cat -> dog (4)"
    assert s["temperature"] == 1.5 and "held-out" in s["temperature_fit_on"]
    without = accuracy_summary(make_evaluation(temperature=False))
    assert without["temperature"] is None and without["ece_after_temperature"] is None
