"""The training recipe: one frozen dataclass, and the CLI generated from it.

Every field carries a default, a unit and a help sentence in its metadata;
``build_parser`` turns exactly these fields into flags, so the CLI and the
config cannot drift. Fields marked ``recipe=False`` steer the run (where to
write, when to stop, whether to resume) without changing its result, so a
resumed run may change them; every other field must match the checkpoint.

The defaults are the single-GPU recipe (H100/H200 class), aimed at >= 93.5%
on the test split within 300 s of training: batch 512, SGD Nesterov, peak lr
0.2 reached from 0.04 over the first 20% of steps then falling linearly to 0,
weight decay 5e-4 on conv/linear weights only, flip + 4 px reflect translate +
cutout 12, label smoothing 0.1, 80 epochs all at 32 px under torch.compile,
EMA of the weights with its BatchNorm statistics recomputed at the end. Why
each choice: ``RECIPE_NOTES`` below. ``--help`` also shows the ~15 min recipe
for the 2-core CPU.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

SCHEDULES = ("onecycle", "cosine")
DEFAULT_DATA = "data/cifar10-jpeg.tar.gz"  # inside the checkout (git-ignored), so a bare copy of the repo finds it

# Why the defaults are what they are (public results: see the README's training section).
RECIPE_NOTES = """\
- One resolution (32 px) throughout: torch.compile then compiles once (~10 s) instead of once per
  resolution, the EMA never averages weights trained at another resolution, and the accuracy effect of
  progressive resizing on CIFAR is unmeasured.
- Peak lr 0.2 at batch 512 (--lr 0.1 per 256 images): 0.4 made the anchor's loss spike near epoch 13.
- 80 epochs: ~2.6 s each at the anchor's ~19,100 images/s leaves room for per-epoch evaluation, the
  compile and the replay inside 300 s; the ResNet-18 recipe this follows reaches 95.3-95.7% at 80.
- EMA 0.999 (a ~1,000-step memory, ~10 of 80 epochs) and then BatchNorm statistics recomputed for the
  averaged weights, because averaged running statistics do not belong to averaged weights.
"""
AMP_DTYPES = ("bfloat16", "none")
ARCHS = ("resnet50", "plain50")

# Named recipes: each value with the reason for it. ``--preset NAME`` makes them the defaults; a flag
# given beside it still wins. Measurements behind them: shared/notes/training-recipes.md and the README.
PRESETS: dict[str, dict[str, tuple[Any, str]]] = {
    "cpu": {
        "device": ("cpu", "the 2-core CPU this recipe is sized for"),
        "amp": ("bfloat16", "2.7x the float32 step at 32 px on AMX (43.9 vs 16.4 img/s); a CPU without bf16 units "
                            "falls back to float32 by itself"),
        "epochs": (15, "~115 min here: the probes trained 2 epochs of 45,000 images in 13.6 min (~7.6 min per "
                       "epoch of 50,000 with this ramp, evaluation included), and this CPU's speed varies by ~15%; a "
                       "180-minute session keeps ~15 min for the export and ~30 for the tests and the commit"),
        "batch_size": (128, "smaller batches are faster per image on this CPU (cache): 64 -> 56, 128 -> 51, "
                            "256 -> 43 img/s at 32 px; 128 keeps BatchNorm statistics steady"),
        "lr": (0.4, "peak 0.2 at batch 128: on 5,000 held-out training images after 2 epochs of this preset, "
                    "59.7% against 52.9% with the pilot's peak 0.1 (README, Training: the probes)"),
        "warmup": (0.15, "the pilot's warm-up share; a short run needs the peak early"),
        "warmup_from": (0.1, "the pilot's start of the warm-up"),
        "min_res": (16, "a 16 px step is 3.3x cheaper than a 32 px one in bf16 (145.7 vs 43.9 img/s)"),
        "res_ramp_start": (0.5, "16 px for the first 65% of the steps (res_step 8: 24 px from the ramp's middle)"),
        "res_ramp_end": (0.8, "the last 20% at 32 px, 15% at 24 px before: a net trained small needs time at the "
                              "test size (FixRes, Touvron et al. 2019)"),
        "cutout": (0, "a short run underfits rather than overfits (Page shrank cutout for runs of <= 14 epochs), "
                      "and at 16 px a 12 px square hides most of the image"),
        "ema_decay": (0.0, "the lr decays to 0, which averaging would mostly repeat; its gain there is unmeasured"),
        "checkpoint_every": (1, "a hard kill loses at most one epoch (a checkpoint is ~1 s against 5-14 min)"),
        "eval_images": (2000, "a 2,000-image evaluation per epoch costs ~15 s instead of ~75 s; the export scores "
                              "all 10,000"),
        "eval_batch_size": (250, "fits the CPU's caches"),
        "compile": (False, "CPU runs stay eager: +11% at 32 px for a 44 s compile per resolution"),
    },
}
PRESET_NAMES = tuple(PRESETS)


class ConfigError(ValueError):
    """A setting is out of range or does not fit the run it should continue."""


def _field(default: Any, unit: str, help: str, *, choices: tuple[str, ...] | None = None, recipe: bool = True) -> Any:
    return field(default=default, metadata={"unit": unit, "help": help, "choices": choices, "recipe": recipe})


@dataclass(frozen=True)
class TrainConfig:
    # --- data and files (none of these change what is learned) ---
    data: str = _field(
        DEFAULT_DATA,
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
    checkpoint_every: int = _field(
        0, "epochs",
        "also write checkpoint.pt every this many epochs (0 = only at the end and when interrupted: one "
        "checkpoint is ~280 MB and ~1 s, too dear every epoch of a 300 s GPU run)",
        recipe=False,
    )
    stop_after_steps: int = _field(0, "steps", "save a checkpoint and stop after this many optimizer steps in total, as if interrupted (0 = never)", recipe=False)
    preset: str = _field(
        "", "name",
        "start from a named recipe (PRESETS in train/config.py: its values and why); flags given beside it win",
        choices=("", *PRESET_NAMES), recipe=False,
    )
    init_from: str = _field(
        "", "path",
        "warm restart: start from these weights (our safetensors, e.g. assets/resnet50_cifar10.safetensors) with a "
        "fresh optimizer and this run's own warm-up and decay; the history, replay and runs of the folder they sit "
        "in are continued (epochs numbered on). Empty = random init",
    )
    force_export: bool = _field(
        False, "flag",
        "export even when the new weights score below the weights already in --export-to (by default those are kept)",
        recipe=False,
    )
    holdout: int = _field(
        0, "images",
        "hold this many training images out (a fixed random slice, never trained on) and evaluate on them instead "
        "of the test split: for choosing a recipe without looking at the test split (0 = train on all 50,000)",
    )

    # --- the network ---
    arch: str = _field(
        "resnet50", "name",
        "resnet50, or plain50: the same layers and init with every shortcut removed (He et al.'s plain baseline, "
        "trained by python -m train.twin for the explorer's Why residuals tab); plain50 records no replay and "
        "cannot be exported as the explorer's model",
        choices=ARCHS,
    )

    # --- length ---
    epochs: int = _field(80, "epochs", "passes over the training images (each of --max-train-images images if set)")
    max_train_images: int = _field(0, "images", "training images per epoch, a fresh random subset every epoch (0 = all 50,000); sets fractional epochs for CPU runs")
    batch_size: int = _field(512, "images", "global batch per optimizer step, split evenly across DDP ranks; the last partial batch of an epoch is dropped")

    # --- optimizer ---
    lr: float = _field(0.1, "per 256 images", "peak learning rate of SGD per 256 images of batch; the used peak is lr * batch_size / 256")
    momentum: float = _field(0.9, "", "SGD momentum")
    nesterov: bool = _field(True, "flag", "Nesterov momentum")
    weight_decay: float = _field(5e-4, "coefficient", "L2 weight decay on conv and linear weights (not on BatchNorm parameters or biases)")
    label_smoothing: float = _field(0.1, "probability", "label smoothing of the cross-entropy target")
    schedule: str = _field("onecycle", "name", "after warm-up, 'onecycle' falls linearly to 0, 'cosine' along a half cosine to 0", choices=SCHEDULES)
    warmup: float = _field(0.2, "fraction of steps", "linear learning-rate warm-up from --warmup-from x peak to the peak")
    warmup_from: float = _field(0.2, "fraction of peak", "learning rate at the first step of the warm-up, as a fraction of the peak")
    ema_decay: float = _field(0.999, "per step", "exponential moving average of the weights, evaluated and exported instead of the raw weights (0 = off)")
    bn_recalibration: int = _field(
        10240, "images",
        "at the end, recompute the EMA weights' BatchNorm statistics from this many augmented training images "
        "at 32 px (0 = keep the averaged statistics; no effect without EMA)",
    )

    # --- augmentation (batched tensor ops on the device) ---
    crop_pad: int = _field(4, "px", "random crop of 32x32 from the image reflect-padded by this much (0 = no crop)")
    flip: bool = _field(True, "flag", "random horizontal flip")
    cutout: int = _field(12, "px", "side of the square cut out (set to the mean colour) at a random place (0 = off)")

    # --- progressive resizing ---
    min_res: int = _field(32, "px", "training resolution at the start; rises to 32 between --res-ramp-start and --res-ramp-end (32 = off)")
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
    eval_batch_size: int = _field(500, "images", "batch for evaluation", recipe=False)
    lesion_images: int = _field(
        2000, "images",
        "test images of the lesion study the export writes (lesions.json, the Why residuals tab), a fixed random "
        "subset (all when fewer): each image passes the net ~16 times, ~9 min for 2,000 on 2 cores in float32",
        recipe=False,
    )
    loss_every: int = _field(
        0, "steps",
        "also record the mean training loss of every this many steps into history.json's 'losses' (0 = per epoch only)",
        recipe=False,
    )

    # --- training replay (insight.replay): what the explorer's "How it learned" tab shows ---
    replay: bool = _field(
        True, "flag",
        "record the 30 sample images' probabilities, Grad-CAM and block ratios at step 0, early steps and every "
        "epoch end, plus per-class accuracy and confusion once per epoch, into replay.npz",
    )

    # --- reproducibility and speed ---
    seed: int = _field(0, "", "seeds weights, data order and augmentation")
    device: str = _field("auto", "name", "'auto' (cuda if available), 'cpu', 'cuda' or 'cuda:N'", recipe=False)
    compile: bool = _field(
        True, "flag",
        "torch.compile the training step's model on CUDA (one cold compile per resolution, ~10 s each); "
        "CPU runs stay eager, where a compile costs minutes",
        recipe=False,
    )
    channels_last: bool = _field(True, "flag", "NHWC memory layout for convolutions (faster on CUDA tensor cores and on CPU)", recipe=False)
    amp: str = _field(
        "bfloat16", "dtype",
        "autocast dtype of the training step on CUDA, and on a CPU with bf16 units (AMX-BF16 or AVX512-BF16 in "
        "/proc/cpuinfo; other CPUs train in float32). Weights, optimizer state, BatchNorm statistics, the loss and the "
        "EMA stay float32 ('none' = float32 everywhere)",
        choices=AMP_DTYPES,
    )

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
        need(0 <= self.warmup_from <= 1, f"warmup_from is a fraction of the peak lr in [0, 1], got {self.warmup_from}")
        need(self.bn_recalibration >= 0, f"bn_recalibration must be 0 (off) or a number of images, got {self.bn_recalibration}")
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
        need(self.lesion_images >= 1, f"lesion_images must be >= 1, got {self.lesion_images}")
        need(self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        need(self.checkpoint_every >= 0, f"checkpoint_every must be 0 (end and interruptions only) or more, got {self.checkpoint_every}")
        need(self.stop_after_steps >= 0, f"stop_after_steps must be >= 0, got {self.stop_after_steps}")
        need(self.amp in AMP_DTYPES, f"amp must be one of {', '.join(AMP_DTYPES)}, got {self.amp!r}")
        need(bool(self.data), "data must name a path")
        need(bool(self.out), "out must name a folder")
        need(not (self.resume and self.overwrite), "resume and overwrite contradict each other; pass one")
        need(0 <= self.holdout <= 25_000, f"holdout must be 0..25,000 training images, got {self.holdout}")
        need(self.arch in ARCHS, f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        need(self.arch == "resnet50" or not self.export_to,
             f"export_to makes the explorer's model, a ResNet-50; {self.arch} runs are not exported")
        need(self.arch == "resnet50" or not self.init_from,
             f"init_from continues shipped ResNet-50 weights; a {self.arch} run starts from its own init")
        need(self.loss_every >= 0, f"loss_every must be 0 (off) or a number of steps, got {self.loss_every}")
        need(self.preset in ("", *PRESET_NAMES), f"preset must be one of {', '.join(PRESET_NAMES)}, got {self.preset!r}")

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


EXAMPLES = f"""examples:
  one GPU, the default recipe (data/cifar10-jpeg.tar.gz inside the checkout; train/gpu_run.sh wraps it):
    python -m train --overwrite --export-to assets
  several GPUs (batch and lr are global, so the recipe is unchanged):
    torchrun --standalone --nproc_per_node=4 -m train --export-to assets
  2-core CPU, ~15 min of training (300 steps of 128: ~80% at 16 px, then 24 and 32 px):
    python -m train --device cpu --out runs/cpu15 --epochs 3 --max-train-images 12800 --batch-size 128 \\
        --lr 0.2 --warmup 0.15 --warmup-from 0 --min-res 16 --res-ramp-start 0.8 --res-ramp-end 0.92 \\
        --cutout 0 --ema-decay 0 --eval-images 1000 --eval-batch-size 250 --export-to assets
  continue after Ctrl-C / SIGTERM (a checkpoint is saved first): the same command plus --resume

why the defaults:
{RECIPE_NOTES}
the cpu preset (--preset cpu), value and reason:
{{cpu_preset}}"""


def build_parser(prog: str = "python -m train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train ResNet-50 from scratch on CIFAR-10. Every flag is a field of train.config.TrainConfig.",
        epilog=EXAMPLES.format(cpu_preset=preset_help("cpu")),
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


def preset_help(name: str) -> str:
    return "\n".join(f"  --{k.replace('_', '-')} {v!r}: {why}" for k, (v, why) in PRESETS[name].items())


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    parser = build_parser()
    # The preset's values become the defaults, so every flag given beside it still wins.
    known, _ = parser.parse_known_args(argv)
    if known.preset:
        parser.set_defaults(**{k: v for k, (v, _) in PRESETS[known.preset].items()})
    args = parser.parse_args(argv)
    try:
        return TrainConfig(**vars(args))
    except ConfigError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
