"""The lesion study of given weights, written as assets/lesions.json (the Why residuals tab reads it).

    python -m train.lesions --weights assets/resnet50_cifar10.safetensors \\
        --data data/cifar10-jpeg.tar.gz --out assets

Top-1 accuracy in float32 on a fixed 2,000-image subset of the test split (the images every
training run's per-epoch evaluation sees) with each of the 16 residual branches removed and with
each pair of adjacent ones removed (``insight.residuals.lesion_study``). The export writes it too;
the file records the weights' sha256, so the app can tell when it no longer describes its model.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from insight.residuals import LESIONS_FILE, describe_lesions, lesion_study
from resnet.files import atomic_write_json
from resnet.model import ResNet, fuse_batchnorm

from .augment import normalize
from .data import EVAL_SUBSET_SEED, Split, eval_subset
from .hardware import processor_name
from .inference import exact_float32, weights_command, weights_sha256_in

LESION_IMAGES = 2000


def subset_rows(n_test: int, size: int = LESION_IMAGES) -> np.ndarray:
    """The fixed test images of every lesion study: all of them when there are fewer."""
    return eval_subset(n_test, size)


def _batches(test: Split, rows: np.ndarray, device: torch.device, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        images = torch.from_numpy(test.images[chunk]).to(device)
        yield normalize(images), torch.from_numpy(test.labels[chunk]).to(device)


def study_of(model: ResNet, test: Split, *, device: torch.device, batch_size: int = 250, dataset: str = "",
             show_progress: bool = True, desc: str = "lesions", images: int = LESION_IMAGES) -> dict[str, Any]:
    """The lesion study of ``model`` on the fixed subset of ``test``, as the JSON files hold it.

    Run on a copy with BatchNorm folded into the convolutions: the same function (the tests hold the
    two studies equal), a third faster."""
    rows = subset_rows(len(test), images)
    served = fuse_batchnorm(model.to(device).eval()).to(memory_format=torch.channels_last)
    with exact_float32(), torch.inference_mode(), tqdm(total=len(rows), desc=desc, unit="img",
                                                       disable=not show_progress) as bar:
        study = lesion_study(served, _batches(test, rows, device, batch_size), progress=lambda n: bar.update(n - bar.n))
    return {
        **study.to_dict(),
        "dataset": dataset,
        "subset": f"{len(rows):,} test images, drawn once with seed {EVAL_SUBSET_SEED}"
                  + (" (the per-epoch evaluations' images)" if images == LESION_IMAGES else ""),
        "precision": "float32",
        "device": processor_name(device),
        "torch_threads": torch.get_num_threads(),
    }


def write_lesions(model: ResNet, test: Split, assets_dir: Path | str, *, device: torch.device, batch_size: int = 250,
                  dataset: str = "", weights_sha256: str | None = None, show_progress: bool = True,
                  images: int = LESION_IMAGES) -> dict[str, Any]:
    """The study of ``model`` written atomically as ``assets_dir``/lesions.json; ``weights_sha256``
    defaults to the hash of the weights file there (right when the export has just written them)."""
    assets_dir = Path(assets_dir)
    if weights_sha256 is None:
        weights_sha256 = weights_sha256_in(assets_dir, "lesion study")
    study = study_of(model, test, device=device, batch_size=batch_size, dataset=dataset, show_progress=show_progress,
                     images=images)
    study["weights_sha256"] = weights_sha256
    atomic_write_json(assets_dir / LESIONS_FILE, study)
    return study


def describe(study: dict[str, Any], out: str) -> str:
    """What the command prints: where, how long, the verdict and every block's top-1."""
    lines = [f"wrote {Path(out) / LESIONS_FILE} in {study['seconds']:.0f} s on {study['device']}", describe_lesions(study)]
    lines += [f"  without {name:>8}: {study['single'][name] * 100:6.2f}%" for name in study["blocks"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return weights_command(argv, "python -m train.lesions", __doc__, f"folder for {LESIONS_FILE}", write_lesions,
                           describe)


if __name__ == "__main__":
    sys.exit(main())
