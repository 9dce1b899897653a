"""The training loop: data resident on the device, batched augmentation, SGD + EMA.

``_fit`` reads top to bottom like nanoGPT's loop: setup (``Run``: model,
optimizer, EMA, generators, data on the device, resumed state), then the loop
(one optimizer step per iteration, a host sync every few steps to check the
loss and stop requests), then the end of each epoch (``end_epoch``:
evaluation, replay, history, checkpoint) and the end of the run (export).

The training replay (``insight.replay``, on unless ``--no-replay``): rank 0
snapshots the 30 shipped sample images through the evaluated weights (the EMA
if on) at step 0, at a few log-spaced steps of the first epoch and at the end
of every epoch, and records per-class accuracy and the confusion matrix of
every evaluation. The recorder lives in the checkpoint, so a resumed run
records exactly what an uninterrupted one does; ``replay.npz`` is written
beside ``history.json`` with every checkpoint (LZMA is too slow for every epoch
of a GPU run) and exported to the assets.

One process trains on one device; launched by ``torchrun --nproc_per_node=N``
every rank trains its share of each global batch under DistributedDataParallel
and rank 0 alone writes files. A step draws its images from a per-epoch
permutation (identical on all ranks), augments them on the device with the
rank's own generator, and runs at the resolution the progressive-resizing
schedule gives for the run's progress.

Everything that decides the next step (weights, optimizer, EMA, generators,
global RNGs and ``RunState``) goes into the checkpoint, so on CPU an
interrupted and resumed run ends bit-identical to an uninterrupted one. On
CUDA cuDNN autotuning trades that for speed.
"""

from __future__ import annotations

import copy
import importlib
import math
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from insight.replay import REPLAY_FILE, ReplayRecorder, probe_snapshot, record_steps
from resnet.constants import INPUT_SIZE
from resnet.files import atomic_write_json
from resnet.model import ARCHITECTURE_NAMES, ARCHITECTURES, ResNet

from .augment import train_batch
from .checkpoint import (
    CHECKPOINT_FILE,
    HISTORY_FILE,
    all_finite,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import ConfigError, TrainConfig
from .data import Cifar10, eval_subset, load_cifar10, sample_rows
from .export import export_run, portable_config
from .hardware import bf16_pays, cpu_model, precision_name, processor_name
from .inference import predict_logits, resolve_device
from .lineage import Lineage, read_lineage

__all__ = ["HISTORY_FILE", "TIMING_KEYS", "TrainResult", "TrainingDiverged", "fit", "lr_factor", "resolution_at"]

TIMING_KEYS = ("epoch_seconds", "images_per_second", "eval_seconds", "replay_seconds")  # differ between identical runs
GPU_SYNC_EVERY = 20  # steps between host syncs on CUDA (loss check, progress, stop requests)
BN_RECAL_SEED = 7_919  # the images and augmentation of the BatchNorm recalibration, fixed per run seed
HOLDOUT_SEED = 104_729  # fixed: every run with the same --holdout holds out the same training images
# Everything the run imports lazily (safetensors only at export): checked before the first step,
# so a box without one fails in seconds instead of after minutes of training.
RUN_MODULES = ("numpy", "PIL.Image", "safetensors.torch", "tqdm")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; nothing was saved from that point on."""


@dataclass
class TrainResult:
    finished: bool
    history: list[dict[str, Any]]
    checkpoint: Path
    stopped_by: str | None = None  # "stop_after_steps", "SIGINT" or "SIGTERM" when not finished
    signal: int | None = None
    model: nn.Module | None = field(default=None, repr=False)  # the evaluated/exported weights


# ----- schedules ---------------------------------------------------------------------------


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based) of ``total``."""
    warm = int(round(cfg.warmup * total))
    if step < warm:
        return cfg.warmup_from + (1.0 - cfg.warmup_from) * (step + 1) / warm
    q = (step - warm) / max(total - warm, 1)
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * q))
    return 1.0 - q


def resolution_at(step: int, total: int, cfg: TrainConfig) -> int:
    """Training resolution in px at ``step``: min_res, a ramp, then 32 for the final phase."""
    progress = step / total
    if cfg.min_res >= INPUT_SIZE or progress >= cfg.res_ramp_end:
        return INPUT_SIZE
    if progress < cfg.res_ramp_start:
        return cfg.min_res
    # progress is inside [ramp_start, ramp_end) here, so the ramp has a non-zero length
    t = (progress - cfg.res_ramp_start) / (cfg.res_ramp_end - cfg.res_ramp_start)
    res = int((cfg.min_res + (INPUT_SIZE - cfg.min_res) * t) // cfg.res_step * cfg.res_step)
    return max(cfg.min_res, min(INPUT_SIZE, res))


def peak_lr(cfg: TrainConfig) -> float:
    return cfg.lr * cfg.batch_size / 256


# ----- model helpers ----------------------------------------------------------------------


class Ema:
    """Exponential moving average of every floating tensor of the state dict (BN statistics too)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        # state_dict() tensors share storage with the modules, and all updates are
        # in place, so these lists stay valid for the whole run.
        self._pairs = [
            (e, m) for e, m in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True)
        ]
        self._float = [(e, m) for e, m in self._pairs if e.is_floating_point()]
        self._other = [(e, m) for e, m in self._pairs if not e.is_floating_point()]

    @torch.no_grad()
    def update(self, step: int) -> None:
        # Early on the average would be dominated by the random init; ramp the decay up.
        decay = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_([e for e, _ in self._float], [m for _, m in self._float], 1.0 - decay)
        for e, m in self._other:
            e.copy_(m)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    decay, no_decay = [], []
    for p in model.parameters():
        # BN scales/shifts and biases are not weights to shrink: decaying them only fights BN.
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=peak_lr(cfg), momentum=cfg.momentum, nesterov=cfg.nesterov)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: list[Tensor], use_amp: bool) -> None:
    """Replace every BatchNorm's running statistics by their plain average over ``batches``.

    An EMA averages the running statistics along with the weights, but the
    statistics of averaged weights are not the average of the statistics
    (``torch.optim.swa_utils.update_bn`` does the same for SWA).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches, each weighted alike
    was_training = model.training
    model.train()
    try:
        for x in batches:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=use_amp):
                model(x)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)


def device_name(device: torch.device, world: int) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return f"{world} x {name}" if world > 1 else name


def estimate_cpu_seconds(model: ResNet, steps: Counter[int], cfg: TrainConfig, use_amp: bool) -> float:
    """Seconds of training for ``steps`` (resolution -> steps), from one timed step at each resolution.

    On a copy of the model with constant inputs: neither the run's weights nor any random
    generator is touched, so a resumed run stays bit-identical to an uninterrupted one.
    """
    probe = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(probe.parameters(), lr=0.0)
    y = torch.zeros(cfg.batch_size, dtype=torch.long)
    total = 0.0
    for res, n in steps.items():
        x = torch.zeros(cfg.batch_size, 3, res, res)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for _ in range(2):  # the first step of a shape also picks and lays out oneDNN's kernels
            start = time.perf_counter()
            with probe.inplace_activations(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_amp):
                logits = probe(x)
            F.cross_entropy(logits.float(), y).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds = time.perf_counter() - start
        total += seconds * n
    return total


def check_run_can_finish(cfg: TrainConfig, device: torch.device) -> None:
    """Fail now, not after training, when the end of the run could not happen here."""
    missing = []
    for name in RUN_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            missing.append(f"{name} ({exc})")
    if cfg.compile and device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            missing.append("triton (torch.compile on CUDA; or pass --no-compile)")
    if missing:
        raise ConfigError(f"This Python lacks what the run needs: {'; '.join(missing)}. Install it before training.")
    if cfg.export_to:
        target = Path(cfg.export_to)
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--export-to {target} cannot be created ({exc}).") from exc
        if not os.access(target, os.W_OK):
            raise ConfigError(f"--export-to {target} is not writable.")


# ----- distributed --------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def reduce(self, values: Tensor, op: Any = None) -> Tensor:
        if self.world > 1:
            dist.all_reduce(values, op=op or dist.ReduceOp.SUM)
        return values

    def any(self, flags: Tensor) -> list[bool]:
        """Whether any rank raised each flag; the ranks' only agreement point besides DDP."""
        return [bool(v) for v in self.reduce(flags.float(), dist.ReduceOp.MAX if self.world > 1 else None).tolist()]

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_distributed(cfg: TrainConfig) -> tuple[Dist, torch.device, bool]:
    """(ranks, this rank's device, whether we initialised the process group)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), resolve_device(cfg.device), False
    ctx = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return ctx, device, created


# ----- setup: the run's modules, generators and state ----------------------------------------


@dataclass
class RunState:
    """Where the run stands: with the modules' and generators' states, all that a checkpoint holds."""

    sums: Tensor  # this rank's loss * images, correct, images in the current epoch (on the device)
    epoch: int = 0  # epochs finished
    step_in_epoch: int = 0
    global_step: int = 0
    perm: Tensor | None = None  # the current epoch's image order; None between epochs
    res_steps: Counter[int] = field(default_factory=Counter)  # steps per resolution in the current epoch
    epoch_seconds: float = 0.0  # training-step seconds of the current epoch so far (across an interruption)
    train_seconds: float = 0.0  # wall clock from the first step to now: compile and evaluations included
    replay_seconds: float = 0.0  # of those, spent recording the replay (snapshots and writing replay.npz)
    history: list[dict[str, Any]] = field(default_factory=list)
    losses: list[dict[str, Any]] = field(default_factory=list)  # every loss_every steps: step, epoch, loss, lr, res
    finished: bool = False


class Run:
    """Everything ``_fit`` sets up: the model, its optimizer and EMA, generators, data on the device, state."""

    def __init__(self, cfg: TrainConfig, data: Cifar10, ctx: Dist, device: torch.device) -> None:
        self.cfg, self.data, self.ctx, self.device = cfg, data, ctx, device
        # The held-out slice (--holdout) is never trained on: recipes are chosen on it, not on the test split.
        train_rows = np.arange(len(data.train))
        holdout_rows = None
        if cfg.holdout:
            if cfg.holdout >= len(data.train):
                raise ConfigError(f"--holdout {cfg.holdout} leaves none of the {len(data.train)} training images to train on")
            order = np.random.default_rng(HOLDOUT_SEED).permutation(len(data.train))
            holdout_rows, train_rows = np.sort(order[: cfg.holdout]), np.sort(order[cfg.holdout :])
        self.evaluated_on = "holdout" if holdout_rows is not None else "test"
        n_train = self.n_train = len(train_rows)
        self.per_epoch = min(cfg.max_train_images or n_train, n_train)
        if cfg.batch_size % ctx.world:
            raise ConfigError(f"batch_size {cfg.batch_size} does not split evenly over {ctx.world} processes")
        self.steps_per_epoch = self.per_epoch // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(f"batch_size {cfg.batch_size} is larger than the {self.per_epoch} training images per epoch")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.local_batch = cfg.batch_size // ctx.world
        self.lr_peak = peak_lr(cfg)
        self.use_amp = cfg.amp == "bfloat16" and bf16_pays(device)
        self.precision = precision_name(cfg.amp, device)
        self.sync_every = 1 if device.type == "cpu" else GPU_SYNC_EVERY
        self.ckpt_path = Path(cfg.out) / CHECKPOINT_FILE

        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fastest kernels; not bit-reproducible
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        self.model: ResNet = ARCHITECTURES[cfg.arch]()
        # A warm restart (--init-from) starts from those weights and continues their lineage; a resumed
        # run takes the lineage from its checkpoint instead (load), whatever the folder holds by then.
        self.lineage = Lineage()
        if cfg.init_from and not cfg.resume:
            self.lineage, state = read_lineage(cfg.init_from, list(sample_rows(data.test.labels)))
            self.model.load_state_dict(state)
            for note in self.lineage.notes:
                self.say(f"note: {note}")
        self.model = self.model.to(device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = Ema(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.eval_model: nn.Module = self.ema.module if self.ema is not None else self.model
        self.optimizer = make_optimizer(self.model, cfg)
        self.step_model: nn.Module = self.model
        if ctx.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.step_model = DDP(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.compile and device.type == "cuda":
            self.step_model = torch.compile(self.step_model, dynamic=False)
        # Same order of images on every rank (each takes its slice of a global batch),
        # but each rank its own augmentation stream.
        self.perm_gen = torch.Generator().manual_seed(cfg.seed)
        self.aug_gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + 1 + ctx.rank)
        self.state = RunState(sums=torch.zeros(3, dtype=torch.float64, device=device), history=list(self.lineage.history))
        self.window = torch.zeros(2, dtype=torch.float64, device=device)  # loss * images, images since the last loss row
        self._perm_on_device: tuple[Tensor | None, Tensor | None] = (None, None)

        self.train_x = torch.from_numpy(data.train.images[train_rows]).to(device)
        self.train_y = torch.from_numpy(data.train.labels[train_rows]).to(device)
        evaluated = data.test if holdout_rows is None else data.train
        eval_rows = np.arange(len(data.test)) if holdout_rows is None else holdout_rows
        self.test_x = torch.from_numpy(evaluated.images[eval_rows]).to(device)
        self.test_y = torch.from_numpy(evaluated.labels[eval_rows])
        self.eval_rows: Tensor | None = None
        if 0 < cfg.eval_images < len(eval_rows):
            self.eval_rows = torch.from_numpy(eval_subset(len(eval_rows), cfg.eval_images))

        # The replay, recorded by rank 0 only: the shipped samples, as the export picks them.
        self.recorder: ReplayRecorder | None = None
        self.record_at: set[int] = set()  # steps of the first epoch to snapshot; epoch ends come on top
        # The replay shows how a residual net's blocks wake up; a plain net has no shortcut to show it against.
        if cfg.replay and ctx.main and cfg.arch == "resnet50":
            probes = sample_rows(data.test.labels)
            rows = list(probes.values())
            self.probe_x = torch.from_numpy(data.test.images[rows]).to(device)
            self.recorder = ReplayRecorder(list(probes), data.test.labels[rows].tolist())
            if self.lineage.replay is not None:  # a warm restart appends to the replay of the runs before
                self.recorder = ReplayRecorder.from_state_dict(self.lineage.replay)
            self.record_at = set(record_steps(self.steps_per_epoch))

    def say(self, *args: Any, **kwargs: Any) -> None:
        if self.ctx.main:
            print(*args, **kwargs)

    def lr_at(self, step: int) -> float:
        return self.lr_peak * lr_factor(step, self.total_steps, self.cfg)

    def batch(self) -> tuple[Tensor, Tensor, int]:
        """This rank's augmented slice of the next global batch, its labels and its resolution."""
        s, cfg = self.state, self.cfg
        if s.perm is None:  # the first step of an epoch: a fresh order, fresh sums
            s.perm = torch.randperm(self.n_train, generator=self.perm_gen)[: self.per_epoch]
            s.sums.zero_()
            s.res_steps.clear()
            s.epoch_seconds = 0.0
        if self._perm_on_device[0] is not s.perm:
            # Once per epoch: a host-to-device copy every step would make the host wait for the GPU.
            self._perm_on_device = (s.perm, s.perm.to(self.device))
        first = s.step_in_epoch * cfg.batch_size + self.ctx.rank * self.local_batch
        idx = self._perm_on_device[1][first : first + self.local_batch]
        res = resolution_at(s.global_step, self.total_steps, cfg)
        x = train_batch(self.train_x[idx], self.aug_gen, pad=cfg.crop_pad, flip=cfg.flip, cutout=cfg.cutout,
                        resolution=res, channels_last=cfg.channels_last)
        return x, self.train_y[idx], res

    @torch.no_grad()
    def count(self, loss: Tensor, logits: Tensor, y: Tensor, res: int) -> Tensor:
        """Add a step to the epoch's device-side sums (no host sync); returns whether the loss is finite."""
        s = self.state
        s.sums[0] += loss.double() * y.numel()
        s.sums[1] += (logits.argmax(1) == y).sum()
        s.sums[2] += y.numel()
        if self.cfg.loss_every:
            self.window[0] += loss.double() * y.numel()
            self.window[1] += y.numel()
        s.global_step += 1
        s.step_in_epoch += 1
        s.res_steps[res] += 1
        return torch.isfinite(loss)

    def log_loss(self, lr: float, res: int) -> None:
        """A row of the loss curve: the mean training loss of the steps since the last row."""
        s = self.state
        total, n = self.ctx.reduce(self.window.clone()).tolist()
        self.window.zero_()
        s.losses.append({"step": self.lineage.steps_before + s.global_step,
                         "epoch": self.lineage.epochs_before + s.global_step / self.steps_per_epoch,
                         "loss": total / n, "lr": lr, "resolution": res})

    def evaluate(self) -> tuple[float, float, np.ndarray, np.ndarray]:
        """(loss, accuracy, labels, predictions) of the evaluated weights on the test images (rank 0)."""
        images = self.test_x if self.eval_rows is None else self.test_x[self.eval_rows.to(self.device)]
        labels = self.test_y if self.eval_rows is None else self.test_y[self.eval_rows]
        logits = predict_logits(self.eval_model, images, device=self.device, batch_size=self.cfg.eval_batch_size,
                                amp=self.cfg.amp if self.use_amp else "none", channels_last=self.cfg.channels_last)
        preds = logits.argmax(1)
        return F.cross_entropy(logits, labels).item(), (preds == labels).double().mean().item(), labels.numpy(), preds.numpy()

    def snapshot(self) -> None:
        """Add the probe set as the evaluated weights see it now; reads the weights, changes nothing."""
        if self.recorder is None:
            return
        start = time.perf_counter()
        s = self.state
        snap = probe_snapshot(self.eval_model, self.probe_x, self.recorder.probe_labels)
        if not all(np.isfinite(v).all() for v in snap.values()):
            # Weights gone NaN show here before the next loss check on CUDA (every GPU_SYNC_EVERY steps).
            raise self.diverged(f"by step {s.global_step} (the replay's probe images give NaN)")
        before = self.lineage
        self.recorder.add_snapshot(snap, step=before.steps_before + s.global_step,
                                   epoch=before.epochs_before + s.global_step / self.steps_per_epoch,
                                   images_seen=before.images_before + s.global_step * self.cfg.batch_size)
        s.replay_seconds += time.perf_counter() - start

    def recalibrate_bn(self) -> None:
        """The EMA weights' own BatchNorm statistics, from augmented training images at full resolution."""
        cfg = self.cfg
        n = min(cfg.bn_recalibration, self.n_train)
        rows = torch.randperm(self.n_train, generator=torch.Generator().manual_seed(cfg.seed + BN_RECAL_SEED))[:n]
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed + BN_RECAL_SEED)
        batches = [
            train_batch(self.train_x[rows[i : i + cfg.batch_size].to(self.device)], gen, pad=cfg.crop_pad, flip=cfg.flip,
                        cutout=cfg.cutout, resolution=INPUT_SIZE, channels_last=cfg.channels_last)
            for i in range(0, n, cfg.batch_size)
        ]
        recalibrate_bn(self.eval_model, batches, self.use_amp)

    def diverged(self, where: str) -> TrainingDiverged:
        kept = f"the last good checkpoint {self.ckpt_path} is kept" if self.ckpt_path.exists() else "no checkpoint was written"
        lr = self.lr_at(max(self.state.global_step - 1, 0))
        return TrainingDiverged(
            f"Training diverged: the loss became NaN or infinite {where} (learning rate {lr:.3g} = "
            f"--lr {self.cfg.lr} x batch {self.cfg.batch_size} / 256 x schedule). Nothing was saved from that point on; "
            f"{kept}. Lower --lr or lengthen --warmup."
        )

    def save(self, stopped: bool) -> None:
        """Every rank calls this (the generators and sums are gathered); rank 0 writes."""
        s = self.state
        aug_states = self.ctx.gather(self.aug_gen.get_state())
        all_sums = self.ctx.gather(s.sums.cpu())
        if not self.ctx.main:
            return
        if not all_finite(self.model) or not all_finite(self.eval_model):
            raise TrainingDiverged("the weights hold NaN or infinity; refusing to write a checkpoint")
        save_checkpoint(self.ckpt_path, {
            "config": self.cfg.to_dict(), "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "epoch": s.epoch, "step_in_epoch": s.step_in_epoch, "global_step": s.global_step,
            "perm": s.perm, "sums": all_sums, "res_steps": {str(k): v for k, v in s.res_steps.items()},
            "epoch_seconds": s.epoch_seconds, "train_seconds": s.train_seconds, "replay_seconds": s.replay_seconds,
            "history": s.history, "finished": s.finished, "losses": s.losses, "window": self.window.cpu(),
            "replay": self.recorder.state_dict() if self.recorder is not None else None,
            "perm_gen": self.perm_gen.get_state(), "aug_gen": aug_states, "rng": rng_state(self.device),
            "world": self.ctx.world, "device": device_name(self.device, self.ctx.world), "stopped": stopped,
            "precision": self.precision, "threads": torch.get_num_threads(), "lineage": self.lineage.to_dict(),
            "processor": processor_name(self.device),
        })
        if self.recorder is not None:
            start = time.perf_counter()
            self.recorder.save(Path(self.cfg.out) / REPLAY_FILE)
            s.replay_seconds += time.perf_counter() - start

    def load(self, ckpt: dict[str, Any]) -> None:
        s, ctx = self.state, self.ctx
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt["ema"])
        s.epoch, s.step_in_epoch, s.global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        s.perm = ckpt["perm"]
        if ckpt["world"] == ctx.world:
            s.sums = ckpt["sums"][ctx.rank].to(self.device)
        s.res_steps = Counter({int(k): v for k, v in ckpt["res_steps"].items()})
        s.epoch_seconds, s.train_seconds, s.replay_seconds = ckpt["epoch_seconds"], ckpt["train_seconds"], ckpt["replay_seconds"]
        if self.recorder is not None:
            self.recorder = ReplayRecorder.from_state_dict(ckpt["replay"])
        s.history, s.finished = list(ckpt["history"]), ckpt["finished"]
        s.losses = list(ckpt.get("losses") or [])
        if ckpt.get("window") is not None:
            self.window = ckpt["window"].to(self.device)
        self.lineage = Lineage.from_dict(ckpt.get("lineage"))
        self.perm_gen.set_state(ckpt["perm_gen"])
        set_rng_state(ckpt["rng"], self.device)
        if ckpt["world"] == ctx.world:
            self.aug_gen.set_state(ckpt["aug_gen"][ctx.rank])
        else:
            self.say(f"note: checkpoint made with {ckpt['world']} processes, now {ctx.world}: augmentation re-seeded")
        if s.finished:
            self.say(f"{self.ckpt_path} holds a finished run ({s.epoch} epochs); nothing left to train")
        else:
            self.say(f"resuming {self.ckpt_path}: epoch {s.epoch + 1}, step {s.step_in_epoch}/{self.steps_per_epoch}")

    def plan(self) -> str:
        cfg = self.cfg
        steps = Counter(resolution_at(s, self.total_steps, cfg) for s in range(self.total_steps))
        per_res = ", ".join(f"{r} px: {n}" for r, n in sorted(steps.items()))
        compiled = "eager"
        if cfg.compile and self.device.type == "cuda":
            compiled = f"compiled ({len(steps)} resolution{'s' if len(steps) > 1 else ''}: one cold compile each)"
        return (
            f"training {ARCHITECTURE_NAMES[cfg.arch]} on {self.data.name} ({len(self.data.train)} train / {len(self.data.test)} test images) on "
            f"{device_name(self.device, self.ctx.world)} in {self.precision}: {cfg.epochs} epochs x {self.steps_per_epoch} "
            f"steps of {cfg.batch_size} images ({self.per_epoch} per epoch), peak lr {self.lr_peak:.3g}, {compiled}; "
            f"steps per resolution {{{per_res}}}; evaluated on {self.evaluated_on_words()}{self.lineage_words()}"
            f"{self.duration_words(steps)}"
        )

    def evaluated_on_words(self) -> str:
        if self.evaluated_on == "holdout":
            return f"{self.cfg.holdout} held-out training images (never trained on), not the test split"
        return "the test split"

    def lineage_words(self) -> str:
        if not self.cfg.init_from:
            return ""
        before = self.lineage
        return (f"; warm restart {before.run_number} from {self.cfg.init_from} (sha256 {before.init_from_sha256[:12]}), "
                f"after {before.epochs_before} epochs of {len(before.runs)} earlier run(s)")

    def duration_words(self, steps: Counter[int]) -> str:
        """On a CPU, how long the run will take here: the step's speed measured now, at each resolution."""
        if self.device.type != "cpu" or self.ctx.world > 1:
            return ""
        seconds = estimate_cpu_seconds(self.model, steps, self.cfg, self.use_amp)
        # The plan line names the precision once already; the estimate was timed in it.
        return f"; expected here ~{seconds / 60:.0f} min of training (one step timed at each resolution)"


# ----- the run ------------------------------------------------------------------------------


class _StopRequests:
    """SIGINT/SIGTERM ask for a checkpoint at the next step boundary; a second one stops at once."""

    def __init__(self, announce: bool) -> None:
        self.signum: int | None = None
        self.announce = announce
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        if self.announce:
            print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step (again to stop now)", file=sys.stderr)

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


def fit(cfg: TrainConfig, data: Cifar10 | None = None, show_progress: bool = True,
        command_started: float | None = None) -> TrainResult:
    """Train (or resume) the run ``cfg`` describes, then export it if ``cfg.export_to`` is set.

    ``command_started`` is the ``time.perf_counter()`` at which the whole command
    began; the model card reports the command's wall time from it.
    """
    ctx, device, created = setup_distributed(cfg)
    try:
        return _fit(cfg, data, ctx, device, show_progress, command_started)
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def _fit(cfg: TrainConfig, data: Cifar10 | None, ctx: Dist, device: torch.device, show_progress: bool,
         command_started: float | None) -> TrainResult:
    # ----- setup -----
    ckpt = _resume_state(cfg, Path(cfg.out) / CHECKPOINT_FILE)
    check_run_can_finish(cfg, device)
    run = Run(cfg, data if data is not None else load_cifar10(cfg.data, download=cfg.download), ctx, device)
    if ckpt is not None:
        run.load(ckpt)
    s, model, optimizer = run.state, run.model, run.optimizer

    # ----- the loop -----
    with _StopRequests(announce=ctx.main) as stop:
        if not s.finished:
            run.say(run.plan(), flush=True)
        clock = time.perf_counter()  # the training wall clock runs from here to the last step
        while not s.finished:
            model.train()
            bar = tqdm(total=run.steps_per_epoch, initial=s.step_in_epoch, desc=f"epoch {s.epoch + 1}/{cfg.epochs}",
                       unit="step", leave=False, disable=not (ctx.main and show_progress),
                       # Into a log, a line every 30 s of a long (CPU) epoch and none for a 3 s GPU epoch.
                       mininterval=0.5 if sys.stderr.isatty() else 30, delay=0 if sys.stderr.isatty() else 10)
            finite = torch.ones((), dtype=torch.bool, device=device)
            # What the last step ran with (a resumed epoch may have no step left to run).
            lr, res = run.lr_at(max(s.global_step - 1, 0)), resolution_at(max(s.global_step - 1, 0), run.total_steps, cfg)
            start = time.perf_counter()
            while s.step_in_epoch < run.steps_per_epoch:
                if s.global_step in run.record_at:
                    run.snapshot()
                lr = run.lr_at(s.global_step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x, y, res = run.batch()
                with model.inplace_activations(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.use_amp):
                    logits = run.step_model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if run.ema is not None:
                    run.ema.update(s.global_step)
                finite &= run.count(loss.detach(), logits.detach(), y, res)
                if cfg.loss_every and s.global_step % cfg.loss_every == 0:
                    run.log_loss(lr, res)

                asked = bool(cfg.stop_after_steps) and s.global_step >= cfg.stop_after_steps
                if asked or s.step_in_epoch % run.sync_every == 0 or s.step_in_epoch == run.steps_per_epoch:
                    is_bad, is_stopped = ctx.any(torch.stack([~finite, torch.tensor(stop.signum is not None, device=device)]))
                    if is_bad:
                        raise run.diverged(f"in epoch {s.epoch + 1} by step {s.global_step}")
                    if not bar.disable:
                        done = s.sums.tolist()
                        bar.set_postfix_str(f"loss {done[0] / done[2]:.3f} acc {done[1] / done[2]:.3f} {res}px lr {lr:.3g}", refresh=False)
                        bar.update(s.step_in_epoch - bar.n)
                    if asked or is_stopped:
                        bar.close()
                        s.epoch_seconds += time.perf_counter() - start
                        s.train_seconds += time.perf_counter() - clock
                        run.save(stopped=True)
                        got = None if asked else signal.Signals(stop.signum or signal.SIGTERM)
                        by = got.name if got else "stop_after_steps"
                        run.say(f"stopped ({by}) at epoch {s.epoch + 1}, step {s.step_in_epoch}/{run.steps_per_epoch}; "
                                f"checkpoint {run.ckpt_path}; continue with --resume", flush=True)
                        return TrainResult(False, s.history, run.ckpt_path, by, int(got) if got else None, run.eval_model)
            bar.close()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            s.epoch_seconds += time.perf_counter() - start
            clock = end_epoch(run, lr, res, clock)
            # Agreed across ranks: a signal may reach one rank only, and run.save() is collective.
            stop_now = ctx.any(torch.tensor([stop.signum is not None], device=device))[0] and not s.finished
            if s.finished or stop_now or (cfg.checkpoint_every and s.epoch % cfg.checkpoint_every == 0):
                run.save(stopped=stop_now)
            if stop_now:
                by = signal.Signals(stop.signum or signal.SIGTERM)
                run.say(f"stopped ({by.name}) after epoch {s.epoch}; checkpoint {run.ckpt_path}; continue with --resume", flush=True)
                return TrainResult(False, s.history, run.ckpt_path, by.name, int(by), run.eval_model)

    # ----- the end of the run -----
    if run.recorder is not None:
        run.say(f"replay: {len(run.recorder)} snapshots recorded in {s.replay_seconds:.1f} s "
                f"({s.replay_seconds / max(s.train_seconds, 1e-9):.2%} of {s.train_seconds:.0f} s of training)", flush=True)
    if cfg.export_to:
        if ctx.main:
            export_run(cfg.out, cfg.export_to, data=run.data, device=device, show_progress=show_progress,
                       command_started=command_started, force=cfg.force_export)
        ctx.barrier()
    return TrainResult(True, s.history, run.ckpt_path, model=run.eval_model)


def end_epoch(run: Run, lr: float, res: int, clock: float) -> float:
    """After an epoch's last step: evaluate, record its history row, write history.json.

    Returns the training clock to keep counting from. ``train_seconds`` is the
    wall time from the first step to the last (plus the BatchNorm
    recalibration, which makes the weights): the last epoch's evaluation and
    everything after it stay out.
    """
    cfg, s, ctx = run.cfg, run.state, run.ctx
    totals = ctx.reduce(s.sums.clone()).tolist()
    number = s.epoch + 1
    last = number == cfg.epochs
    if last and run.ema is not None and cfg.bn_recalibration:
        run.recalibrate_bn()
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    now = time.perf_counter()
    s.train_seconds += now - clock  # this epoch's evaluation goes into the next epoch's share
    clock = now

    test_loss = test_acc = None
    eval_seconds, n_eval = 0.0, 0
    if last or (cfg.eval_every and number % cfg.eval_every == 0):
        t_eval = time.perf_counter()
        if ctx.main:
            test_loss, test_acc, labels, preds = run.evaluate()
            n_eval = len(labels)
            if run.recorder is not None:
                run.recorder.add_epoch_eval(run.lineage.epochs_before + number, labels, preds)
        ok = torch.tensor([test_loss is None or math.isfinite(test_loss)], device=run.device)
        if ctx.any(~ok)[0]:
            raise run.diverged(f"in the evaluation after epoch {number}")
        eval_seconds = time.perf_counter() - t_eval
    run.snapshot()

    s.history.append({
        "epoch": run.lineage.epochs_before + number,  # numbered on from the runs before a warm restart
        "run": run.lineage.run_number,
        "evaluated_on": run.evaluated_on,
        "train_loss": totals[0] / totals[2],
        "train_acc": totals[1] / totals[2],
        "test_loss": test_loss,
        "test_acc": test_acc,
        "lr": lr,
        "epoch_seconds": s.epoch_seconds,
        "images_per_second": totals[2] / s.epoch_seconds,
        "resolution": res,
        "resolution_steps": {str(r): n for r, n in sorted(s.res_steps.items())},
        "eval_seconds": eval_seconds,
        "replay_seconds": s.replay_seconds,  # so far: what recording the replay has cost the run up to here
        "test_images": n_eval,
        "train_images": int(totals[2]),  # counted on every rank and summed
        "images_seen": run.lineage.images_before + s.global_step * cfg.batch_size,
    })
    s.epoch, s.step_in_epoch, s.perm, s.finished = number, 0, None, last
    if ctx.main:
        atomic_write_json(Path(cfg.out) / HISTORY_FILE, {"config": portable_config(cfg), "epochs": s.history,
                                                         **({"losses": s.losses} if cfg.loss_every else {})})
        h = s.history[-1]
        test = (f" {run.evaluated_on} loss {test_loss:.4f} acc {test_acc:.4f} ({n_eval} images)"
                if test_acc is not None else "")
        run.say(f"epoch {number}/{cfg.epochs}: train loss {h['train_loss']:.4f} acc {h['train_acc']:.4f}{test} "
                f"lr {lr:.3g} {res}px {h['images_per_second']:.0f} img/s {s.epoch_seconds:.0f}+{eval_seconds:.0f} s", flush=True)
    return clock


def _resume_state(cfg: TrainConfig, ckpt_path: Path) -> dict[str, Any] | None:
    if not ckpt_path.exists():
        if cfg.resume:
            raise ConfigError(f"Nothing to resume: {ckpt_path} does not exist. Drop --resume to start a new run.")
        return None
    if not cfg.resume:
        if cfg.overwrite:
            return None
        raise ConfigError(
            f"{ckpt_path} already exists. Pass --resume to continue that run, --overwrite to start afresh, "
            "or choose another --out."
        )
    ckpt = load_checkpoint(ckpt_path)
    saved = TrainConfig.from_dict(ckpt["config"]).recipe()
    changed = {k: (saved[k], v) for k, v in cfg.recipe().items() if saved.get(k) != v}
    if changed:
        diffs = ", ".join(f"{k}: {old!r} in the checkpoint, {new!r} now" for k, (old, new) in changed.items())
        raise ConfigError(f"Cannot resume {ckpt_path} with a different recipe ({diffs}). Use the same settings, or --overwrite.")
    return ckpt
