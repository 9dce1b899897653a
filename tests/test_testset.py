"""The test-set explorer reads train.evaluate's two files and turns them into dropdowns and galleries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import AUTOMOBILE, CAT, DOG, TRUCK, make_evaluation, write_assets
from insight.testset import (
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
from resnet.constants import NUM_CLASSES


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
