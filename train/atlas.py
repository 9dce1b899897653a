"""Compute the channel atlas for given weights and write assets/channel_atlas.npz.

    python -m train.atlas --weights assets/resnet50_cifar10.safetensors \\
        --data ../shared/data/cifar10-jpeg.tar.gz --out assets

For every channel of the stem and of the four stages: its 9 most exciting
test images (by spatial maximum, with the cell of the maximum) and its mean
activation per class, over the whole test split (see ``insight.atlas``). One
float32 forward pass over the 10,000 test images; the file records the
weights' sha256, so the app can tell when it no longer matches the model it
serves. ``write_atlas`` is what the export calls after evaluation.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from insight.atlas import ATLAS_FILE, SIZE_TARGET, atlas_bytes, compute_atlas, stage_summary
from resnet.files import atomic_write_bytes

from .data import Split
from .inference import exact_float32, resolve_device, weights_command, weights_sha256_in


def write_atlas(
    model: nn.Module,
    test: Split,
    assets_dir: Path | str,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 250,
    dataset: str = "",
    weights_sha256: str | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Compute the atlas of ``model`` on ``test`` and write it atomically into ``assets_dir``.

    ``weights_sha256`` defaults to the hash of ``assets_dir``'s weights file,
    which is right when the export has just written the weights there. Returns
    a short summary: path, bytes, seconds (wall and process CPU), device and
    the per-stage dead / selectivity numbers.
    """
    assets_dir = Path(assets_dir)
    device = resolve_device(device) if isinstance(device, str) else device
    if weights_sha256 is None:
        weights_sha256 = weights_sha256_in(assets_dir, "atlas")
    wall, cpu = time.perf_counter(), time.process_time()
    # float32 on CUDA too (no TF32), so a GPU and a CPU run rank the same images.
    with exact_float32(), tqdm(total=len(test), desc="atlas", unit="img", disable=not show_progress) as bar:
        atlas = compute_atlas(model.to(device), test.images, test.labels, batch_size=batch_size, device=device,
                              progress=lambda done: bar.update(done - bar.n))
    seconds = {"wall_seconds": round(time.perf_counter() - wall, 1), "cpu_seconds": round(time.process_time() - cpu, 1)}
    atlas.meta.update(
        weights_sha256=weights_sha256,
        dataset=dataset,
        device=str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        torch_threads=torch.get_num_threads(),
        **seconds,
    )
    # The data set's own files of the stored images, where it came as files (the JPEG pack): the smallest exact copy.
    sources = None if test.files is None else [test.files[int(r)] for r in atlas.image_rows]
    data = atlas_bytes(atlas, sources)  # encoding the images is part of the cost but not of the forward pass timed above
    path = assets_dir / ATLAS_FILE
    atomic_write_bytes(path, data)
    return {
        "path": str(path),
        "bytes": len(data),
        "within_target": len(data) <= SIZE_TARGET,
        "images_stored": int(len(atlas.image_rows)),
        "n_images": atlas.n_images,
        "device": atlas.meta["device"],
        **seconds,
        "stages": [stage_summary(s) for s in atlas.stages.values()],
    }


def describe(summary: dict[str, Any]) -> str:
    """What the command prints: size, time and one line per stage."""
    lines = [
        f"wrote {summary['path']}: {summary['bytes'] / 1e6:.2f} MB ({summary['bytes']:,} bytes, target "
        f"{SIZE_TARGET / 1e6:.0f} MB{'' if summary['within_target'] else ': OVER the target'}), "
        f"{summary['images_stored']:,} of {summary['n_images']:,} test images stored; "
        f"{summary['wall_seconds']:.0f} s wall, {summary['cpu_seconds']:.0f} s process CPU on {summary['device']}"
    ]
    for s in summary["stages"]:
        median = "n/a" if s["selectivity_median"] is None else f"{s['selectivity_median']:.3f}"
        lines.append(
            f"  {s['stage']:>6}: {s['dead']:>4} of {s['channels']:>4} channels dead; selectivity median {median}, "
            f"{s['selective']} live channels with SI >= 0.5"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return weights_command(argv, "python -m train.atlas", __doc__, f"folder for {ATLAS_FILE}", write_atlas,
                           lambda summary, _out: describe(summary))


if __name__ == "__main__":
    sys.exit(main())
