"""Evaluate weights on the CIFAR-10 test split and write assets/evaluation.json.

    python -m train.evaluate --weights assets/resnet50_cifar10.safetensors \\
        --data data/cifar10-jpeg.tar.gz --out assets

Always in float32 (TF32 off on CUDA), whatever the weights were trained in: this is
the number a model card reports. Reports plain and flip-TTA accuracy, per-class accuracy, the confusion matrix,
calibration (ECE over 15 bins, reliability bins), a temperature fitted on the
even-indexed test images with the ECE it leaves on the odd-indexed ones, and
every image's prediction. Also writes test_gallery.npz: the most confident
mistakes per (true, predicted) pair and the most confident hits per class.
Runs on any device; 10,000 images on the 2-core CPU take ~4 min per pass
(two passes: plain and mirrored).
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from insight.calibration import expected_calibration_error, fit_temperature, reliability, softmax
from insight.testset import EVALUATION_FILE, GALLERY_FILE
from resnet.constants import CLASSES
from resnet.files import atomic_write_bytes, atomic_write_json
from resnet.weights import WeightsError, load_weights

from .data import DataError, Split, load_cifar10
from .inference import add_model_and_data_arguments, exact_float32, predict_logits, resolve_device

ECE_BINS = 15
GALLERY_PER_CELL = 32  # most confident mistakes per (true, predicted) pair
GALLERY_PER_CLASS = 32  # most confident correct images per class


def _bins(confidence: np.ndarray, correct: np.ndarray) -> dict[str, list]:
    bins = reliability(confidence, correct, ECE_BINS)
    return {k: [round(v, 6) for v in vals] if k != "count" else vals for k, vals in bins.items()}


def evaluation_report(logits: Tensor, logits_flip: Tensor, labels: np.ndarray, *, dataset: str, weights: str) -> dict[str, Any]:
    """The evaluation.json dictionary (see helper contract) from the two passes' logits."""
    z = logits.double().numpy()
    y = np.asarray(labels, dtype=np.int64)
    n = int(y.size)
    k = len(CLASSES)
    probs = softmax(z)
    # Flip TTA averages the two probability vectors (not the logits): each pass stays a calibrated guess.
    probs_tta = 0.5 * (probs + softmax(logits_flip.double().numpy()))
    pred = probs.argmax(1)
    confidence = probs.max(1)
    correct = pred == y
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)

    even, odd = np.arange(0, n, 2), np.arange(1, n, 2)
    temperature = fit_temperature(z[even], y[even])
    probs_t = softmax(z[odd], temperature)
    conf_t, correct_t = probs_t.max(1), probs_t.argmax(1) == y[odd]
    return {
        "dataset": dataset,
        "weights": weights,
        "n": n,
        "accuracy": float(correct.mean()),
        "accuracy_tta": float((probs_tta.argmax(1) == y).mean()),
        "per_class_accuracy": [round(float(a), 6) for a in per_class],
        "confusion_matrix": confusion.tolist(),
        "ece": expected_calibration_error(confidence, correct, ECE_BINS),
        "ece_bins": ECE_BINS,
        "reliability": _bins(confidence, correct),
        "temperature": temperature,
        "temperature_fit_on": (
            f"even-indexed test images (rows 0, 2, 4, ...; {even.size} of {n}) by minimising NLL; "
            f"ece_after_temperature and reliability_after_temperature are measured on the "
            f"odd-indexed ones (rows 1, 3, 5, ...; {odd.size} of {n})"
        ),
        # The same odd half before scaling, so the before/after comparison is like for like.
        "ece_before_temperature_on_odd": expected_calibration_error(probs[odd].max(1), correct[odd], ECE_BINS),
        "ece_after_temperature": expected_calibration_error(conf_t, correct_t, ECE_BINS),
        "reliability_after_temperature": _bins(conf_t, correct_t),
        "predictions": {
            "label": y.tolist(),
            "pred": pred.tolist(),
            "confidence": [round(float(c), 6) for c in confidence],
            "true_class_prob": [round(float(p), 6) for p in probs[np.arange(n), y]],
        },
    }


def gallery_index(report: dict[str, Any], per_cell: int = GALLERY_PER_CELL, per_class: int = GALLERY_PER_CLASS) -> np.ndarray:
    """Rows to keep: per (true, predicted) mistake cell its most confident mistakes, per class its most confident hits."""
    p = report["predictions"]
    label, pred = np.asarray(p["label"]), np.asarray(p["pred"])
    confidence = np.asarray(p["confidence"])
    keep = []
    for t in range(len(CLASSES)):
        for q in range(len(CLASSES)):
            rows = np.flatnonzero((label == t) & (pred == q))
            limit = per_class if t == q else per_cell
            keep.append(rows[np.argsort(-confidence[rows], kind="stable")[:limit]])
    return np.sort(np.concatenate(keep)).astype(np.int32)


def gallery_bytes(images: np.ndarray, index: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=np.ascontiguousarray(images[index], dtype=np.uint8), index=index.astype(np.int32))
    return buffer.getvalue()


def evaluate_model(
    model: nn.Module,
    test: Split,
    *,
    dataset: str,
    weights: str,
    device: torch.device,
    batch_size: int = 250,
    channels_last: bool = True,
    show_progress: bool = True,
) -> tuple[dict[str, Any], np.ndarray]:
    """(evaluation.json dict, gallery row indices) for a model on a test split, computed in float32."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    images = torch.from_numpy(test.images)
    with exact_float32(), tqdm(total=2 * len(test), desc="evaluate", unit="img", disable=not show_progress) as bar:
        logits = predict_logits(model, images, device=device, batch_size=batch_size, channels_last=channels_last,
                                progress=bar)
        logits_flip = predict_logits(model, images, device=device, batch_size=batch_size,
                                     channels_last=channels_last, flip=True, progress=bar)
    if not torch.isfinite(logits).all():
        raise ValueError(f"the model {weights} produces NaN or infinite logits; these weights are broken")
    report = evaluation_report(logits, logits_flip, test.labels, dataset=dataset, weights=weights)
    return report, gallery_index(report)


def write_evaluation(out_dir: Path, report: dict[str, Any], images: np.ndarray, index: np.ndarray) -> None:
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / EVALUATION_FILE, report)
    atomic_write_bytes(out_dir / GALLERY_FILE, gallery_bytes(images, index))


def class_balanced_subset(test: Split, per_class: int) -> Split:
    """The first ``per_class`` images of every class, keeping test-set order."""
    keep = np.concatenate([np.flatnonzero(test.labels == c)[:per_class] for c in range(len(CLASSES))])
    return Split(test.images[keep], test.labels[keep])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n\n")[0])
    add_model_and_data_arguments(parser, out_help=f"folder for {EVALUATION_FILE} and {GALLERY_FILE}")
    parser.add_argument("--per-class", type=int, default=0, help="evaluate only the first N test images of each class (0 = all)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True, help="NHWC layout")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
        data = load_cifar10(args.data)
        test = class_balanced_subset(data.test, args.per_class) if args.per_class > 0 else data.test
        # Ours or anyone's checkpoint (a model card beside them is checked): --evaluation for `app.py --weights`.
        weights = load_weights(args.weights)
        dataset = f"{data.name} test split" + (f", first {args.per_class} images of each class" if args.per_class > 0 else "")
        start = time.perf_counter()
        report, index = evaluate_model(
            weights.model, test, dataset=dataset, weights=weights.name, device=device,
            batch_size=args.batch_size, channels_last=args.channels_last,
        )
        report["weights_sha256"] = weights.sha256
        write_evaluation(Path(args.out), report, test.images, index)
    except (DataError, WeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{report['n']} images of {dataset}: accuracy {report['accuracy']:.4f}, flip-TTA {report['accuracy_tta']:.4f}, "
        f"ECE {report['ece']:.4f}, T={report['temperature']:.3f} -> ECE {report['ece_after_temperature']:.4f} on odd half "
        f"({time.perf_counter() - start:.0f} s on {device}); wrote {Path(args.out) / EVALUATION_FILE} and {GALLERY_FILE}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
