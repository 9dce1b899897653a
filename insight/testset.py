"""The test-set explorer's data: ``assets/evaluation.json`` and ``assets/test_gallery.npz``.

Both files are written by ``python -m train.evaluate``. The JSON holds the
whole-test-set numbers (confusion matrix, calibration, one prediction per
image); the npz holds only the images the explorer shows (every off-diagonal
cell's most confident mistakes plus a sample of correct ones), so the app ships
a few hundred KiB instead of the data set. Rows of the npz point back into the
JSON's per-image arrays through its ``index`` array.

Everything here is numpy + json: it runs without a model.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from resnet.constants import CLASSES, INPUT_SIZE, NUM_CLASSES
from resnet.files import AssetError, read_json
from resnet.weights import ASSETS_DIR

EVALUATION_FILE = "evaluation.json"
GALLERY_FILE = "test_gallery.npz"
HOW_TO_MAKE = "Run `python -m train.evaluate` to write assets/evaluation.json and assets/test_gallery.npz."

RELIABILITY_KEYS: tuple[str, ...] = ("bin_lower", "bin_upper", "confidence", "accuracy", "count")
PREDICTION_KEYS: tuple[str, ...] = ("label", "pred", "confidence", "true_class_prob")


class TestSetError(ValueError):
    """evaluation.json or test_gallery.npz is missing, unreadable or inconsistent."""

    __test__ = False  # not a pytest class, despite the name


class GalleryItem(NamedTuple):
    image: np.ndarray  # uint8 (32, 32, 3) RGB
    caption: str
    row: int  # row in evaluation.json's "predictions" arrays


# ----- evaluation.json -----------------------------------------------------------------


def _fail(path: Path | str, problem: str) -> TestSetError:
    return TestSetError(f"{path} {problem}. {HOW_TO_MAKE}")


def _check_reliability(rel: Any, where: str, path: Path | str) -> None:
    if not isinstance(rel, dict) or any(k not in rel for k in RELIABILITY_KEYS):
        raise _fail(path, f"has no valid {where!r}: it needs the keys {', '.join(RELIABILITY_KEYS)}")
    lengths = {len(rel[k]) for k in RELIABILITY_KEYS}
    if len(lengths) != 1:
        raise _fail(path, f"has {where!r} lists of different lengths")


def validate_evaluation(ev: Any, path: Path | str = EVALUATION_FILE) -> dict[str, Any]:
    """Check an evaluation dict against the contract; return it with per-image lists as numpy arrays.

    The confusion matrix must be exactly what the per-image predictions count to,
    otherwise the explorer's dropdown and gallery would disagree.
    """
    if not isinstance(ev, dict):
        raise _fail(path, "does not hold a JSON object")
    required = ("n", "accuracy", "per_class_accuracy", "confusion_matrix", "ece", "reliability", "predictions")
    missing = [k for k in required if k not in ev]
    if missing:
        raise _fail(path, f"lacks {', '.join(missing)}")
    n = ev["n"]
    if not isinstance(n, int) or n <= 0:
        raise _fail(path, f"has n={n!r}; it must be a positive integer")
    cm = np.asarray(ev["confusion_matrix"])
    if cm.shape != (NUM_CLASSES, NUM_CLASSES) or not np.issubdtype(cm.dtype, np.integer) or (cm < 0).any():
        raise _fail(path, f"has a confusion matrix of shape {cm.shape}; it must be {NUM_CLASSES}x{NUM_CLASSES} counts")
    if int(cm.sum()) != n:
        raise _fail(path, f"has a confusion matrix that counts {int(cm.sum())} images but n={n}")
    if len(ev["per_class_accuracy"]) != NUM_CLASSES:
        raise _fail(path, f"has {len(ev['per_class_accuracy'])} per-class accuracies, not {NUM_CLASSES}")
    _check_reliability(ev["reliability"], "reliability", path)
    if ev.get("reliability_after_temperature") is not None:
        _check_reliability(ev["reliability_after_temperature"], "reliability_after_temperature", path)

    preds = ev["predictions"]
    if not isinstance(preds, dict) or any(k not in preds for k in PREDICTION_KEYS):
        raise _fail(path, f"has no valid 'predictions': it needs {', '.join(PREDICTION_KEYS)}")
    arrays: dict[str, np.ndarray] = {}
    for key in PREDICTION_KEYS:
        arr = np.asarray(preds[key])
        if arr.shape != (n,):
            raise _fail(path, f"has predictions[{key!r}] of shape {arr.shape}, expected ({n},)")
        arrays[key] = arr
    for key in ("label", "pred"):
        if not np.issubdtype(arrays[key].dtype, np.integer):
            raise _fail(path, f"has non-integer predictions[{key!r}]")
        if arrays[key].min() < 0 or arrays[key].max() >= NUM_CLASSES:
            raise _fail(path, f"has predictions[{key!r}] outside 0..{NUM_CLASSES - 1}")
        arrays[key] = arrays[key].astype(np.int64)
    for key in ("confidence", "true_class_prob"):
        arr = arrays[key].astype(np.float64)
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise _fail(path, f"has predictions[{key!r}] outside [0, 1]")
        arrays[key] = arr
    counted = np.bincount(arrays["label"] * NUM_CLASSES + arrays["pred"], minlength=NUM_CLASSES**2)
    if not np.array_equal(counted.reshape(NUM_CLASSES, NUM_CLASSES), cm):
        raise _fail(path, "has a confusion matrix that does not match its per-image predictions")

    out = dict(ev)
    out["confusion_matrix"] = cm.astype(np.int64)
    out["per_class_accuracy"] = np.asarray(ev["per_class_accuracy"], dtype=np.float64)
    out["predictions"] = arrays
    return out


def load_evaluation(path: Path | str = ASSETS_DIR / EVALUATION_FILE) -> dict[str, Any]:
    """Read and validate evaluation.json (see ``validate_evaluation``)."""
    path = Path(path)
    try:
        ev = read_json(path)
    except AssetError as exc:
        if exc.missing:
            raise TestSetError(f"No test-set evaluation at {path}. {HOW_TO_MAKE}") from exc
        raise TestSetError(f"{exc} {HOW_TO_MAKE}") from exc
    return validate_evaluation(ev, path)


def load_gallery(path: Path | str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Read test_gallery.npz: images uint8 (M, 32, 32, 3) and their rows (M,) in 0..n-1."""
    path = Path(path)
    if not path.is_file():
        raise TestSetError(f"No test-image gallery at {path}. {HOW_TO_MAKE}")
    try:
        with np.load(path, allow_pickle=False) as data:
            images, index = data["images"], data["index"]
    except KeyError as exc:
        raise _fail(path, f"lacks the array {exc}") from exc
    except (OSError, ValueError) as exc:
        raise _fail(path, f"is not a readable .npz file ({exc})") from exc
    shape = (INPUT_SIZE, INPUT_SIZE, 3)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != shape:
        raise _fail(path, f"holds images {images.dtype} {images.shape}; expected uint8 (M, {INPUT_SIZE}, {INPUT_SIZE}, 3)")
    if index.shape != (len(images),) or not np.issubdtype(index.dtype, np.integer):
        raise _fail(path, f"holds an index of {index.dtype} {index.shape}; expected ({len(images)},) integers")
    if len(index) and (index.min() < 0 or index.max() >= n):
        raise _fail(path, f"points at rows outside the {n} evaluated images")
    if len(np.unique(index)) != len(index):
        raise _fail(path, "holds the same test image twice")
    return images, index.astype(np.int64)


class TestSet:
    """Lazily loaded evaluation + gallery: constructing it reads nothing.

    The app builds one at start-up; the files are read (and validated) the first
    time a tab asks, so a missing file costs the Classify tab nothing and the
    explorer tab shows ``HOW_TO_MAKE`` instead.
    """

    __test__ = False  # not a pytest class, despite the name

    def __init__(self, assets_dir: Path | str = ASSETS_DIR) -> None:
        self.assets_dir = Path(assets_dir)
        self._lock = threading.Lock()  # Gradio calls handlers from worker threads
        self._evaluation: dict[str, Any] | None = None
        self._gallery: tuple[np.ndarray, np.ndarray, dict[int, int]] | None = None

    @property
    def evaluation(self) -> dict[str, Any]:
        with self._lock:
            if self._evaluation is None:
                self._evaluation = load_evaluation(self.assets_dir / EVALUATION_FILE)
            return self._evaluation

    def _load_gallery(self) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
        n = self.evaluation["n"]
        with self._lock:
            if self._gallery is None:
                images, index = load_gallery(self.assets_dir / GALLERY_FILE, n)
                self._gallery = (images, index, {int(r): i for i, r in enumerate(index)})
            return self._gallery

    @property
    def images(self) -> np.ndarray:
        """uint8 (M, 32, 32, 3): the shipped test images."""
        return self._load_gallery()[0]

    @property
    def index(self) -> np.ndarray:
        """int64 (M,): each shipped image's row in the evaluation's per-image arrays."""
        return self._load_gallery()[1]

    def available(self) -> str | None:
        """None when both files load, else the message to show instead of the tab."""
        try:
            self._load_gallery()
        except TestSetError as exc:
            return str(exc)
        return None

    def has_image(self, row: int) -> bool:
        return int(row) in self._load_gallery()[2]

    def image(self, row: int) -> np.ndarray:
        """The test image at evaluation row ``row`` (uint8 32x32x3), if it was shipped."""
        where = self._load_gallery()[2].get(int(row))
        if where is None:
            raise TestSetError(f"Test image #{row} is not in {GALLERY_FILE}; only a selection of the test set is shipped.")
        return self.images[where]

    def record(self, row: int) -> dict[str, Any]:
        """What the evaluation says about one test image."""
        p = self.evaluation["predictions"]
        if not 0 <= int(row) < self.evaluation["n"]:
            raise TestSetError(f"There is no test image #{row}; rows are 0..{self.evaluation['n'] - 1}.")
        label, pred = int(p["label"][row]), int(p["pred"][row])
        return {
            "row": int(row),
            "label": label,
            "pred": pred,
            "label_name": CLASSES[label],
            "pred_name": CLASSES[pred],
            "confidence": float(p["confidence"][row]),
            "true_class_prob": float(p["true_class_prob"][row]),
            "correct": label == pred,
        }


# ----- what the explorer shows ---------------------------------------------------------


def _matrix(ev: dict[str, Any]) -> np.ndarray:
    return np.asarray(ev["confusion_matrix"], dtype=np.int64)


def confusion_pairs(ev: dict[str, Any]) -> list[tuple[int, int, int]]:
    """Every (true, predicted, count) mistake with count > 0, most frequent first.

    Ties are broken by (true, predicted) so the dropdown order is stable.
    """
    cm = _matrix(ev)
    pairs = [(t, p, int(cm[t, p])) for t in range(len(cm)) for p in range(len(cm)) if t != p and cm[t, p] > 0]
    return sorted(pairs, key=lambda tpc: (-tpc[2], tpc[0], tpc[1]))


def most_confused_pair(ev: dict[str, Any]) -> tuple[int, int, int] | None:
    """The most frequent mistake as (true, predicted, count); None for a perfect model."""
    pairs = confusion_pairs(ev)
    return pairs[0] if pairs else None


def pair_label(true: int, pred: int, count: int) -> str:
    """'cat -> dog (123)' for a mistake, 'cat -> cat (870 correct)' for the diagonal."""
    suffix = f"{count} correct" if true == pred else f"{count}"
    return f"{CLASSES[true]} -> {CLASSES[pred]} ({suffix})"


def pair_value(true: int, pred: int) -> str:
    return f"{true},{pred}"


def parse_pair(value: str) -> tuple[int, int]:
    """Inverse of ``pair_value``: '3,5' -> (3, 5), with a clear error for anything else."""
    try:
        true, pred = (int(v) for v in str(value).split(","))
    except ValueError:
        raise TestSetError(f"{value!r} is not a (true, predicted) pair; pick one from the list.") from None
    if not (0 <= true < NUM_CLASSES and 0 <= pred < NUM_CLASSES):
        raise TestSetError(f"{value!r} names a class outside 0..{NUM_CLASSES - 1}.")
    return true, pred


def pair_choices(ev: dict[str, Any], include_correct: bool = True) -> list[tuple[str, str]]:
    """(label, value) choices for a dropdown: mistakes by frequency, then each class's correct images."""
    choices = [(pair_label(t, p, c), pair_value(t, p)) for t, p, c in confusion_pairs(ev)]
    if include_correct:
        cm = _matrix(ev)
        choices += [(pair_label(k, k, int(cm[k, k])), pair_value(k, k)) for k in range(len(cm))]
    return choices


def gallery(testset: TestSet, true: int, pred: int, limit: int | None = None) -> list[GalleryItem]:
    """The shipped test images of class ``true`` predicted as ``pred``, most confident first.

    ``pred == true`` gives correctly classified images. Captions carry the
    prediction's confidence and the test row; ``GalleryItem.row`` is what the
    app passes back to ``TestSet.image`` / ``TestSet.record`` on selection.
    """
    if not (0 <= true < NUM_CLASSES and 0 <= pred < NUM_CLASSES):
        raise TestSetError(f"Classes must be in 0..{NUM_CLASSES - 1}, got true={true}, pred={pred}.")
    p = testset.evaluation["predictions"]
    rows = testset.index
    keep = (p["label"][rows] == true) & (p["pred"][rows] == pred)
    positions = np.flatnonzero(keep)
    conf = p["confidence"][rows[positions]]
    # Stable sort on -confidence, then row, so equal confidences keep test-set order.
    order = np.lexsort((rows[positions], -conf))
    positions = positions[order][: limit if limit is not None else None]
    items = []
    for pos in positions:
        row = int(rows[pos])
        c = float(p["confidence"][row])
        caption = f"{CLASSES[pred]} {c:.1%}" + ("" if true == pred else f" (true {CLASSES[true]}, {float(p['true_class_prob'][row]):.1%})")
        items.append(GalleryItem(testset.images[pos], f"{caption} #{row}", row))
    return items


def gallery_summary(testset: TestSet, true: int, pred: int, shown: int | None = None) -> str:
    """One line above the gallery: how many such images exist and how many are shipped.

    ``shown`` is the length of the gallery the caller already built, if any.
    """
    count = int(_matrix(testset.evaluation)[true, pred])
    shown = len(gallery(testset, true, pred)) if shown is None else shown
    what = "classified correctly" if true == pred else f"predicted {CLASSES[pred]}"
    n = testset.evaluation["n"]
    share = f" ({count / n:.1%} of the test set)" if n else ""
    return f"{count} test images of {CLASSES[true]} {what}{share}; showing the {shown} shipped, most confident first."


def accuracy_summary(ev: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers for the tab: accuracy, worst class, most confused pair, ECE (plain floats)."""
    acc = np.asarray(ev["per_class_accuracy"], dtype=np.float64)
    worst = int(np.argmin(acc))
    pair = most_confused_pair(ev)
    temp = ev.get("temperature")
    return {
        "dataset": ev.get("dataset", ""),
        "n": int(ev["n"]),
        "accuracy": float(ev["accuracy"]),
        "accuracy_tta": None if ev.get("accuracy_tta") is None else float(ev["accuracy_tta"]),
        "worst_class": CLASSES[worst],
        "worst_class_accuracy": float(acc[worst]),
        "most_confused": None if pair is None else pair_label(*pair),
        "ece": float(ev["ece"]),
        "temperature": None if temp is None or not math.isfinite(float(temp)) else float(temp),
        "temperature_fit_on": ev.get("temperature_fit_on"),
        "ece_after_temperature": None if ev.get("ece_after_temperature") is None else float(ev["ece_after_temperature"]),
    }
