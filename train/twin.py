"""Train ResNet-50 and its plain twin alike, then write assets/plain_vs_residual.json.

    python -m train.twin --out ~/runs/twin --to assets            # both twins, then the asset
    python -m train.twin --out ~/runs/twin --to assets --resume   # after a stop: goes on where it was

He et al.'s first claim, that the residual mapping is easier to optimise than the unreferenced
one, measured on our own networks: ResNet-50 and plain-50 (``resnet.model.plain50``: the same
layers and init, every shortcut removed) trained with the identical recipe, seed, data order and
budget (the cpu preset's schedule, shortened: ``--epochs`` x ``--images-per-epoch``), each logging
its training loss every few steps and its accuracy on the fixed 2,000 test images after each epoch.
Then the same lesion study on both (``train.lesions``): which blocks each one can lose.
The explorer's Why residuals tab plots the file; the twins' weights are not shipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from insight.atlas import sha256_of
from insight.residuals import LESIONS_FILE, TWIN_FILE
from resnet.files import atomic_write_json
from resnet.model import ARCHITECTURE_NAMES
from resnet.weights import ASSETS_DIR

from .checkpoint import CHECKPOINT_FILE, HISTORY_FILE, load_checkpoint
from .config import PRESETS, ConfigError, TrainConfig
from .data import DataError, load_cifar10
from .inference import resolve_device
from .lesions import study_of
from .trainer import TrainingDiverged, fit

TWINS = ARCHITECTURE_NAMES  # the twins, trained in this order
LOSS_EVERY = 10  # steps between two points of the loss curves
DEFAULT_EPOCHS = 2
# The shipped budget: 12.5 (ResNet-50) and 10.4 (plain-50) min of training in float32 on a 2-core AMD EPYC,
# plus 9 and 5 min for their lesion studies.
DEFAULT_IMAGES_PER_EPOCH = 12_000


def twin_config(arch: str, out: Path, *, epochs: int, images_per_epoch: int, data: str, device: str,
                resume: bool, **overrides: Any) -> TrainConfig:
    """The cpu preset, shortened, for one twin: only ``arch`` and the folder differ between the two."""
    values = {k: v for k, (v, _) in PRESETS["cpu"].items()}
    values.update(device=device, checkpoint_every=1, arch=arch, out=str(out / arch), data=data, epochs=epochs,
                  max_train_images=images_per_epoch, replay=False, loss_every=LOSS_EVERY, resume=resume, preset="cpu")
    return TrainConfig(**{**values, **overrides})


def twin_record(arch: str, run_dir: Path) -> dict[str, Any]:
    """What the tab shows of one finished twin: its loss curve, epochs and seconds."""
    ckpt = load_checkpoint(run_dir / CHECKPOINT_FILE)
    if not ckpt["finished"]:
        raise ConfigError(f"the {TWINS[arch]} twin in {run_dir} is not finished; run again with --resume")
    history = json.loads((run_dir / HISTORY_FILE).read_text())
    return {
        "name": TWINS[arch],
        "arch": arch,
        "losses": history.get("losses", []),
        "epochs": [{k: h[k] for k in ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "test_images",
                                      "images_per_second", "resolution", "resolution_steps")} for h in history["epochs"]],
        "training_seconds": ckpt["train_seconds"],
        "device": ckpt["device"],
        "processor": ckpt.get("processor"),
        "precision": ckpt.get("precision"),
        "threads": ckpt.get("threads"),
    }


def run_twins(out: Path | str, to: Path | str, *, epochs: int = DEFAULT_EPOCHS,
              images_per_epoch: int = DEFAULT_IMAGES_PER_EPOCH, data_path: str = TrainConfig.data,
              device: str = "cpu", resume: bool = False, show_progress: bool = True,
              **overrides: Any) -> dict[str, Any]:
    """Train both twins (each skipped when ``resume`` finds it finished), study their lesions, write the file."""
    out, to = Path(out), Path(to)
    data = load_cifar10(data_path)
    dataset = f"{data.name} test split"
    twins: dict[str, Any] = {}
    configs = {}
    for arch in TWINS:
        cfg = twin_config(arch, out, epochs=epochs, images_per_epoch=images_per_epoch, data=data_path, device=device,
                          resume=resume and (out / arch / CHECKPOINT_FILE).exists(), **overrides)
        configs[arch] = cfg
        result = fit(cfg, data, show_progress=show_progress)
        if not result.finished:
            raise ConfigError(f"the {TWINS[arch]} twin stopped ({result.stopped_by}); run again with --resume")
        record = twin_record(arch, Path(cfg.out))
        record["lesions"] = _lesions_of(result.model, Path(cfg.out), data.test, device=resolve_device(device),
                                        batch_size=cfg.eval_batch_size, dataset=dataset, show_progress=show_progress,
                                        name=TWINS[arch], images=cfg.lesion_images)
        twins[arch] = record
    cfg = configs["resnet50"]
    steps = {str(r): n for r, n in sorted(_steps_per_resolution(twins["resnet50"]).items())}
    asset = {
        "budget": {
            "epochs": epochs,
            "images_per_epoch": cfg.max_train_images,
            "batch_size": cfg.batch_size,
            "peak_lr": cfg.lr * cfg.batch_size / 256,
            "steps_per_resolution": steps,
            "recipe": "the cpu preset (python -m train --preset cpu) shortened to this budget: same seed, data "
                      "order, augmentation and schedule for both",
            "loss_every": LOSS_EVERY,
        },
        "dataset": dataset,
        "seed": cfg.seed,
        "command": f"python -m train.twin --epochs {epochs} --images-per-epoch {images_per_epoch}",
        "twins": twins,
    }
    to.mkdir(parents=True, exist_ok=True)
    atomic_write_json(to / TWIN_FILE, asset)
    return asset


def _lesions_of(model: Any, run_dir: Path, test: Any, *, name: str, images: int, **kwargs: Any) -> dict[str, Any]:
    """The twin's lesion study, kept beside its checkpoint (and named by its sha256 and its size): a command
    run again after a stop does not study a finished twin twice (~5-10 min each on a 2-core CPU)."""
    kept = run_dir / LESIONS_FILE
    checkpoint = sha256_of(run_dir / CHECKPOINT_FILE)
    if kept.is_file():
        study = json.loads(kept.read_text())
        if study.get("checkpoint_sha256") == checkpoint and study.get("images") == min(images, len(test)):
            print(f"{name}: lesion study read from {kept}", flush=True)
            return study
    started = time.perf_counter()
    study = {**study_of(model, test, desc=f"lesions of {name}", images=images, **kwargs),
             "checkpoint_sha256": checkpoint}
    atomic_write_json(kept, study)
    print(f"{name}: lesion study in {time.perf_counter() - started:.0f} s", flush=True)
    return study


def _steps_per_resolution(record: dict[str, Any]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for epoch in record["epochs"]:
        for res, n in epoch["resolution_steps"].items():
            counts[int(res)] = counts.get(int(res), 0) + n
    return counts


def describe(asset: dict[str, Any]) -> str:
    lines = []
    for record in asset["twins"].values():
        final = record["epochs"][-1]
        lines.append(f"{record['name']}: train loss {final['train_loss']:.3f}, test {final['test_acc']:.2%} on "
                     f"{final['test_images']:,} images after {len(record['epochs'])} epoch(s), "
                     f"{record['training_seconds'] / 60:.1f} min on {record['device']} in {record['precision']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.twin", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/twin", help="folder for the two runs (resnet50/, plain50/)")
    parser.add_argument("--to", default=str(ASSETS_DIR), help=f"folder for {TWIN_FILE}")
    parser.add_argument("--data", default=TrainConfig.data, help="CIFAR-10 path (any layout python -m train accepts)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="epochs of each twin")
    parser.add_argument("--images-per-epoch", type=int, default=DEFAULT_IMAGES_PER_EPOCH,
                        help="training images per epoch, a fresh random subset each epoch")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--resume", action="store_true", help="continue the twins saved in --out")
    args = parser.parse_args(argv)
    try:
        asset = run_twins(args.out, args.to, epochs=args.epochs, images_per_epoch=args.images_per_epoch,
                          data_path=args.data, device=args.device, resume=args.resume)
    except (DataError, ConfigError, TrainingDiverged, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(describe(asset))
    print(f"wrote {Path(args.to) / TWIN_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
