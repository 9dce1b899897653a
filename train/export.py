"""Export a finished run into what the app serves.

    python -m train.export --run runs/train --to assets [--data PATH]

Writes, into the target folder: the weights (EMA if the run used it) as
float16 safetensors, ``model_card.json``, ``history.json``, ``samples/``
(the first 3 test images of every class as PNG), the training replay
(``replay.npz``, recorded by the run) and, by evaluating exactly the float16
weights in float32, ``evaluation.json``, ``test_gallery.npz``, the channel
atlas (``channel_atlas.npz``) and the lesion study (``lesions.json``). Everything is made in a hidden folder inside the
target first and then renamed into place, the card last, so a failure at any
point leaves the previous export intact.

Nothing here names a path on the machine that trained: the card and history
carry the data set's name and the recipe, not ``--data`` or ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from insight.replay import REPLAY_FILE, ReplayRecorder
from resnet.constants import JPEG_DATASET_NAME
from resnet.files import atomic_write_bytes, atomic_write_json
from resnet.model import resnet50
from resnet.weights import CARD_FILE, WEIGHTS_FILE, WeightsError, data_contract, load_model, save_weights

from .atlas import write_atlas
from .checkpoint import CHECKPOINT_FILE, HISTORY_FILE, all_finite, load_checkpoint
from .config import ConfigError, TrainConfig
from .data import SAMPLES_PER_CLASS, Cifar10, DataError, load_cifar10, sample_rows
from .evaluate import evaluate_model, write_evaluation
from .inference import resolve_device
from .lesions import write_lesions
from .lineage import Lineage

SAMPLES_DIR = "samples"
# Where files are and how the run was steered, not what was learned: machine-local, left out of what ships.
LOCAL_FIELDS = ("data", "download", "out", "export_to", "resume", "overwrite", "stop_after_steps", "init_from",
                "force_export")


class ExportError(ValueError):
    """The run cannot be exported (unfinished, broken weights)."""


class NotBetter(ExportError):
    """The new weights score below the ones already in the target folder, which are kept."""


def shipped_accuracy(assets_dir: Path, data: Cifar10, device: torch.device, batch_size: int,
                     show_progress: bool) -> float | None:
    """The accuracy of the weights already in ``assets_dir``, by the very evaluation the new ones get
    (float32, the same test split); None when there are none, or none that load."""
    if not (assets_dir / WEIGHTS_FILE).is_file():
        return None
    try:
        shipped = load_model(assets_dir / WEIGHTS_FILE)
    except WeightsError:
        return None
    report, _ = evaluate_model(shipped, data.test, dataset=data.name, weights=WEIGHTS_FILE, device=device,
                               batch_size=batch_size, show_progress=show_progress)
    return report["accuracy"]


def portable_config(cfg: TrainConfig) -> dict[str, Any]:
    """The config as it ships in history.json and the model card: the recipe and speed settings, no paths."""
    values = cfg.to_dict()
    for name in LOCAL_FIELDS:
        values.pop(name)
    return values


def sample_pngs(data: Cifar10) -> dict[str, bytes]:
    """``<class>_<k>.png`` -> PNG bytes: the first 3 test images of each class (not cherry-picked)."""
    out = {}
    for name, row in sample_rows(data.test.labels).items():
        buffer = io.BytesIO()
        Image.fromarray(data.test.images[row]).save(buffer, format="PNG")
        out[name] = buffer.getvalue()
    return out


def export_run(
    run_dir: Path | str,
    assets_dir: Path | str,
    *,
    data: Cifar10 | None = None,
    data_path: str | None = None,
    device: torch.device | str = "auto",
    notes: str = "",
    allow_unfinished: bool = False,
    show_progress: bool = True,
    command_started: float | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Export ``run_dir``'s checkpoint into ``assets_dir``; returns the model card.

    ``command_started`` (a ``time.perf_counter()``) is when the command that
    trained and now exports began: the card reports that command's wall time.
    Weights already in ``assets_dir`` that score higher on the same evaluation
    are kept (``NotBetter``) unless ``force``.
    """
    run_dir, assets_dir = Path(run_dir), Path(assets_dir)
    ckpt = load_checkpoint(run_dir / CHECKPOINT_FILE)
    cfg = TrainConfig.from_dict(ckpt["config"])
    history = list(ckpt["history"])
    lineage = Lineage.from_dict(ckpt.get("lineage"))
    this_run = [h for h in history if h.get("run", 1) == lineage.run_number]  # a warm restart's own epochs
    if not ckpt["finished"] and not allow_unfinished:
        raise ExportError(
            f"The run in {run_dir} is not finished ({len(this_run)} of {cfg.epochs} epochs). "
            "Resume it with --resume, or export anyway with --allow-unfinished."
        )
    use_ema = ckpt["ema"] is not None
    model = resnet50()
    model.load_state_dict(ckpt["ema"] if use_ema else ckpt["model"])
    if not all_finite(model):
        raise ExportError(f"The weights in {run_dir / CHECKPOINT_FILE} hold NaN or infinity; nothing exported.")
    # Evaluate what is served: the weights after their float16 round trip.
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
    if not all_finite(model):
        raise ExportError("The weights overflow float16; nothing exported.")

    if data is None:
        data = load_cifar10(data_path or cfg.data)
    device = resolve_device(device) if isinstance(device, str) else device
    dataset = f"{data.name} test split"
    report, index = evaluate_model(
        model, data.test, dataset=dataset, weights=WEIGHTS_FILE, device=device,
        batch_size=cfg.eval_batch_size, channels_last=cfg.channels_last, show_progress=show_progress,
    )
    shipped = None if force else shipped_accuracy(assets_dir, data, device, cfg.eval_batch_size, show_progress)
    if shipped is not None and report["accuracy"] < shipped:
        raise NotBetter(
            f"The new weights score {report['accuracy']:.2%} on the {dataset}, below the {shipped:.2%} of the weights "
            f"already in {assets_dir} (the same float32 evaluation): those are kept, and nothing was exported. "
            f"The run's checkpoint stays in {run_dir}; --force-export replaces them all the same."
        )
    samples = sample_pngs(data)
    replay = ReplayRecorder.from_state_dict(ckpt["replay"]) if ckpt["replay"] is not None else None

    seen = history[-1]["images_seen"] if history else 0
    trained = sum(h["train_images"] for h in this_run)
    res_steps: dict[str, int] = {}
    for h in this_run:
        for r, n in h.get("resolution_steps", {}).items():
            res_steps[r] = res_steps.get(r, 0) + n
    seconds = ckpt["train_seconds"]
    caveat = (
        " The images are a JPEG q75 re-encoding of CIFAR-10, so accuracy on the original PNG-exact test batch differs slightly."
        if data.name == JPEG_DATASET_NAME else ""
    )
    start = ("Trained from scratch (random init, no pretraining)" if not lineage.init_from_sha256 else
             f"Warm restart {lineage.run_number} (from weights with sha256 {lineage.init_from_sha256[:12]}, after "
             f"{lineage.epochs_before} epochs of {len(lineage.runs)} earlier run(s); fresh optimizer and schedule)")
    run = {
        "run": lineage.run_number,
        "processor": ckpt.get("processor") or ckpt["device"],
        "device": ckpt["device"],
        "precision": ckpt.get("precision", "float32"),
        "threads": ckpt.get("threads"),
        "epochs": len(this_run),
        "first_epoch": this_run[0]["epoch"] if this_run else None,
        "training_seconds": seconds,
        "images_per_second": trained / seconds if seconds else None,
        "test_accuracy": report["accuracy"],
        "test_accuracy_tta": report["accuracy_tta"],
        "init_from_sha256": lineage.init_from_sha256 or None,
        "preset": cfg.preset or None,
    }
    auto_notes = (
        f"{start} with `python -m train` for {len(this_run)} epoch(s), "
        f"{seen:,} training images seen (optimizer steps per resolution: "
        f"{', '.join(f'{r} px: {n}' for r, n in sorted(res_steps.items(), key=lambda kv: int(kv[0])))}), "
        f"on {ckpt['device']} in {seconds / 60:.1f} min (first step to last). Test accuracy {report['accuracy']:.2%} "
        f"on the {dataset} ({report['n']:,} images, float32 evaluation of the float16 weights). Weights: "
        f"{'EMA of the SGD weights' if use_ema else 'the final SGD weights'}, stored as float16.{caveat}"
    )
    card = {
        "architecture": {"name": "ResNet-50", "stem": model.stem_kind, "layers": [3, 4, 6, 3],
                         "parameters": sum(p.numel() for p in model.parameters())},
        **data_contract(),
        "dataset": data.name,
        "test_accuracy": report["accuracy"],
        "test_accuracy_tta": report["accuracy_tta"],
        "test_images": report["n"],
        "evaluation_precision": f"float32 (no autocast, no TF32) on {device.type}",
        "training_seconds": seconds,  # this run's, first step to last: compile and per-epoch evaluations in
        "training_precision": run["precision"],
        "threads": run["threads"],
        "command_seconds": None,  # the whole command (data load, training, evaluation, export), filled in last
        "training_images_per_second": trained / seconds if seconds else None,
        "steady_images_per_second": statistics.median(h["images_per_second"] for h in this_run) if this_run else None,
        "device": ckpt["device"],
        "torch_version": torch.__version__,
        "config": portable_config(cfg),
        "epochs": len(history),  # every run's
        "runs": [*lineage.runs, run],
        "images_seen": seen,
        "weights_from": "ema" if use_ema else "model",
        "samples": f"the first {SAMPLES_PER_CLASS} test images of each class",
        "replay": None if replay is None else {
            "snapshots": len(replay), "recording_seconds": ckpt["replay_seconds"],
            "share_of_training": ckpt["replay_seconds"] / seconds if seconds else None,
        },
        "notes": (notes.strip() + " " if notes.strip() else "") + auto_notes,
    }

    assets_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".export-", dir=assets_dir))
    try:
        weights_path = save_weights(model, stage / WEIGHTS_FILE, {"source": "python -m train", "dataset": data.name})
        report["weights_sha256"] = hashlib.sha256(weights_path.read_bytes()).hexdigest()
        write_evaluation(stage, report, data.test.images, index)
        for name, png in samples.items():
            atomic_write_bytes(stage / SAMPLES_DIR / name, png)
        atomic_write_json(stage / HISTORY_FILE, {"config": portable_config(cfg), "epochs": history})
        if replay is not None:
            replay.save(stage / REPLAY_FILE)
        # After the weights: the atlas names the sha256 of the file beside it.
        atlas = write_atlas(model, data.test, stage, device=device, batch_size=cfg.eval_batch_size,
                            dataset=dataset, show_progress=show_progress)
        card["atlas_seconds"] = atlas["wall_seconds"]
        lesions = write_lesions(model, data.test, stage, device=device, batch_size=cfg.eval_batch_size,
                                dataset=dataset, show_progress=show_progress, images=cfg.lesion_images)
        card["lesions_seconds"] = lesions["seconds"]
        if command_started is not None:
            card["command_seconds"] = time.perf_counter() - command_started
        atomic_write_json(stage / CARD_FILE, card)
        if replay is None:  # a replay left from an earlier export would describe other weights
            (assets_dir / REPLAY_FILE).unlink(missing_ok=True)
        # Into place, the card last: a card always describes files already there.
        for path in sorted((p for p in stage.rglob("*") if p.is_file()), key=lambda p: p.name == CARD_FILE):
            target = assets_dir / path.relative_to(stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    print(f"exported {run_dir} -> {assets_dir}: test accuracy {report['accuracy']:.4f} "
          f"(flip TTA {report['accuracy_tta']:.4f}) on {report['n']} images of {dataset}; "
          f"atlas {atlas['bytes'] / 2**20:.1f} MiB in {atlas['wall_seconds']:.0f} s", flush=True)
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=TrainConfig.out, help="run folder holding checkpoint.pt")
    parser.add_argument("--to", default="assets", help="folder the app serves")
    parser.add_argument("--data", default=None, help="CIFAR-10 path (default: the one the run was trained on)")
    parser.add_argument("--device", default="auto", help="device for the evaluation: auto, cpu, cuda, cuda:N")
    parser.add_argument("--notes", default="", help="a sentence put in front of the card's generated notes")
    parser.add_argument("--allow-unfinished", action="store_true", help="export a run that has not finished all epochs")
    parser.add_argument("--force-export", action="store_true",
                        help="replace the weights in --to even when they score higher than the new ones")
    args = parser.parse_args(argv)
    try:
        export_run(args.run, args.to, data_path=args.data, device=args.device, notes=args.notes,
                   allow_unfinished=args.allow_unfinished, force=args.force_export)
    except (ConfigError, DataError, ExportError, WeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
