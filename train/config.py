"""The training recipe: one frozen dataclass, and the CLI generated from it.

Every field carries a default, a unit and a help sentence in its metadata;
``build_parser`` turns exactly these fields into flags, so the CLI and the
config cannot drift. Fields marked ``recipe=False`` steer the run (where to
write, when to stop, whether to resume) without changing its result, so a
resumed run may change them; every other field must match the checkpoint.

Defaults are for a single-GPU run (H100 class: minutes by estimate, not yet measured). For the 2-core CPU
`--help` shows a ~15 min recipe: fewer images per epoch
(``--max-train-images``), a smaller batch and mostly 16 px training.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

SCHEDULES = ("onecycle", "cosine")
AMP_DTYPES = ("bfloat16", "none")


class ConfigError(ValueError):
    """A setting is out of range or does not fit the run it should continue."""


def _field(default: Any, unit: str, help: str, *, choices: tuple[str, ...] | None = None, recipe: bool = True) -> Any:
    return field(default=default, metadata={"unit": unit, "help": help, "choices": choices, "recipe": recipe})


@dataclass(frozen=True)
class TrainConfig:
    # --- data and files (none of these change what is learned) ---
    data: str = _field(
        "../shared/data/cifar10-jpeg.tar.gz",
        "path",
        "CIFAR-10 as a torchvision root (cifar-10-batches-py/), an image-folder tree "
        "(train/<class>/, test/<class>/) or a .tar.gz of that tree",
        recipe=False,
    )
    download: bool = _field(False, "flag", "download the torchvision CIFAR-10 root into --data if absent (needs internet)", recipe=False)
    out: str = _field("runs/train", "path", "run folder: checkpoint.pt, history.json", recipe=False)
    export_to: str = _field("", "path", "after training, export weights, card, history, samples and evaluation here (e.g. assets); empty = no export", recipe=False)
    resume: bool = _field(False, "flag", "continue the run saved in --out (same recipe) instead of starting one", recipe=False)
    overwrite: bool = _field(False, "flag", "start afresh even if --out already holds a checkpoint", recipe=False)
    checkpoint_every: int = _field(1, "epochs", "write checkpoint.pt every this many epochs; the last epoch and interruptions always write", recipe=False)
    stop_after_steps: int = _field(0, "steps", "save a checkpoint and stop after this many optimizer steps in total, as if interrupted (0 = never)", recipe=False)

    # --- length ---
    epochs: int = _field(40, "epochs", "passes over the training images (each of --max-train-images images if set)")
    max_train_images: int = _field(0, "images", "training images per epoch, a fresh random subset every epoch (0 = all 50,000); sets fractional epochs for CPU runs")
    batch_size: int = _field(512, "images", "global batch per optimizer step, split evenly across DDP ranks; the last partial batch of an epoch is dropped")

    # --- optimizer ---
    lr: float = _field(0.2, "per 256 images", "peak learning rate of SGD per 256 images of batch; the used peak is lr * batch_size / 256")
    momentum: float = _field(0.9, "", "SGD momentum")
    nesterov: bool = _field(True, "flag", "Nesterov momentum")
    weight_decay: float = _field(5e-4, "coefficient", "L2 weight decay on conv and linear weights (not on BatchNorm parameters or biases)")
    label_smoothing: float = _field(0.1, "probability", "label smoothing of the cross-entropy target")
    schedule: str = _field("onecycle", "name", "after warm-up, 'onecycle' falls linearly to 0, 'cosine' along a half cosine to 0", choices=SCHEDULES)
    warmup: float = _field(0.15, "fraction of steps", "linear learning-rate warm-up from 0 to the peak")
    ema_decay: float = _field(0.999, "per step", "exponential moving average of the weights, evaluated and exported instead of the raw weights (0 = off)")

    # --- augmentation (batched tensor ops on the device) ---
    crop_pad: int = _field(4, "px", "random crop of 32x32 from the image reflect-padded by this much (0 = no crop)")
    flip: bool = _field(True, "flag", "random horizontal flip")
    cutout: int = _field(12, "px", "side of the square cut out (set to the mean colour) at a random place (0 = off)")

    # --- progressive resizing ---
    min_res: int = _field(16, "px", "training resolution at the start; rises to 32 between --res-ramp-start and --res-ramp-end (32 = off)")
    res_ramp_start: float = _field(0.25, "fraction of steps", "progress at which the resolution starts rising from --min-res")
    res_ramp_end: float = _field(0.75, "fraction of steps", "progress from which training runs at 32 px")
    res_step: int = _field(8, "px", "resolutions are rounded down to a multiple of this (fewer distinct shapes for torch.compile)")

    # --- evaluation during training (always at 32 px, on the EMA weights if on) ---
    eval_every: int = _field(1, "epochs", "evaluate on the test split every this many epochs; the last epoch always evaluates (0 = last only)")
    eval_images: int = _field(
        0, "images",
        "test images per evaluation during training, a fixed random subset (0 = all); saves time on CPU, "
        "while the export always evaluates the full test split",
        recipe=False,
    )
    eval_batch_size: int = _field(250, "images", "batch for evaluation", recipe=False)

    # --- reproducibility and speed ---
    seed: int = _field(0, "", "seeds weights, data order and augmentation")
    device: str = _field("auto", "name", "'auto' (cuda if available), 'cpu', 'cuda' or 'cuda:N'", recipe=False)
    compile: bool = _field(False, "flag", "torch.compile the training step's model (CUDA; first steps at each resolution are slow)", recipe=False)
    channels_last: bool = _field(True, "flag", "NHWC memory layout for convolutions (faster on CUDA tensor cores and on CPU)", recipe=False)
    amp: str = _field("bfloat16", "dtype", "autocast dtype on CUDA ('none' = float32); CPU always trains in float32", choices=AMP_DTYPES)

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")
        need(self.max_train_images >= 0, f"max_train_images must be 0 (all) or positive, got {self.max_train_images}")
        need(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        need(self.lr > 0, f"lr must be positive, got {self.lr}")
        need(0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}")
        need(not self.nesterov or self.momentum > 0, "nesterov needs momentum > 0")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        need(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        need(0 <= self.warmup < 1, f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        need(0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")
        need(0 <= self.crop_pad <= 16, f"crop_pad must be 0..16 px, got {self.crop_pad}")
        need(0 <= self.cutout <= 32, f"cutout must be 0..32 px, got {self.cutout}")
        need(4 <= self.min_res <= 32, f"min_res must be 4..32 px (32 = no progressive resizing), got {self.min_res}")
        need(
            0 <= self.res_ramp_start <= self.res_ramp_end <= 1,
            f"need 0 <= res_ramp_start <= res_ramp_end <= 1, got {self.res_ramp_start} and {self.res_ramp_end}",
        )
        need(1 <= self.res_step <= 16, f"res_step must be 1..16 px, got {self.res_step}")
        need(self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}")
        need(self.eval_images >= 0, f"eval_images must be >= 0, got {self.eval_images}")
        need(self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        need(self.checkpoint_every >= 1, f"checkpoint_every must be at least 1, got {self.checkpoint_every}")
        need(self.stop_after_steps >= 0, f"stop_after_steps must be >= 0, got {self.stop_after_steps}")
        need(self.amp in AMP_DTYPES, f"amp must be one of {', '.join(AMP_DTYPES)}, got {self.amp!r}")
        need(bool(self.data), "data must name a path")
        need(bool(self.out), "out must name a folder")
        need(not (self.resume and self.overwrite), "resume and overwrite contradict each other; pass one")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config fields: {', '.join(unknown)}")
        return cls(**values)

    def recipe(self) -> dict[str, Any]:
        """The fields that decide what is learned (must match when resuming)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("recipe", True)}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every help line, and the examples kept as written."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


EXAMPLES = """examples:
  GPU (defaults, ~40 epochs):
    python -m train --data ../shared/data/cifar10-jpeg.tar.gz --compile --export-to assets
  several GPUs (batch and lr are global, so the recipe is unchanged):
    torchrun --standalone --nproc_per_node=4 -m train --data PACK --compile --export-to assets
  2-core CPU, ~15 min of training (300 steps of 128: 90% at 16 px, then 24 and 32 px):
    python -m train --data PACK --device cpu --epochs 3 --max-train-images 12800 --batch-size 128 \\
        --min-res 16 --res-ramp-start 0.85 --res-ramp-end 0.95 --cutout 0 --ema-decay 0.99 \\
        --eval-images 1000 --export-to assets
  continue after Ctrl-C / SIGTERM (a checkpoint is saved first): the same command plus --resume
"""


def build_parser(prog: str = "python -m train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train ResNet-50 from scratch on CIFAR-10. Every flag is a field of train.config.TrainConfig.",
        epilog=EXAMPLES,
        formatter_class=_Formatter,
    )
    for f in fields(TrainConfig):
        assert f.default is not MISSING, f"{f.name} needs a default"
        meta = f.metadata
        unit = f" [{meta['unit']}]" if meta["unit"] else ""
        kwargs: dict[str, Any] = {"default": f.default, "help": meta["help"] + unit, "dest": f.name}
        if isinstance(f.default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = type(f.default)
            kwargs["metavar"] = (meta["unit"] or f.name).upper().replace(" ", "_")
            if meta["choices"]:
                kwargs["choices"] = meta["choices"]
                del kwargs["metavar"]
        parser.add_argument(_flag(f.name), **kwargs)
    return parser


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return TrainConfig(**vars(args))
    except ConfigError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
