"""The training loop: data resident on the device, batched augmentation, SGD + EMA.

One process trains on one device; launched by ``torchrun --nproc_per_node=N``
every rank trains its share of each global batch under DistributedDataParallel
and rank 0 alone writes files. A step draws its images from a per-epoch
permutation (identical on all ranks), augments them on the device with the
rank's own generator, and runs at the resolution the progressive-resizing
schedule gives for the run's progress.

Everything that decides the next step (weights, optimizer, EMA, generators,
global RNGs, epoch, step, the epoch's permutation and running sums) goes into
the checkpoint, so on CPU an interrupted and resumed run ends bit-identical to
an uninterrupted one. On CUDA cuDNN autotuning trades that for speed.
"""

from __future__ import annotations

import copy
import math
import os
import platform
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

from resnet.constants import INPUT_SIZE
from resnet.files import atomic_write_json
from resnet.model import ResNet, resnet50

from .augment import train_batch
from .checkpoint import CHECKPOINT_FILE, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import ConfigError, TrainConfig
from .data import Cifar10, load_cifar10
from .inference import predict_logits, resolve_device
from .progress import Progress

HISTORY_FILE = "history.json"
TIMING_KEYS = ("epoch_seconds", "images_per_second", "eval_seconds")  # differ between identical runs
GPU_SYNC_EVERY = 20  # steps between host syncs on CUDA (loss check, progress, stop requests)
EVAL_SUBSET_SEED = 20240601  # fixed: intermediate evaluations of every run see the same images


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
        return (step + 1) / warm
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


def all_finite(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in module.state_dict().values() if t.is_floating_point())


def device_name(device: torch.device, world: int) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"
    return f"{world} x {name}" if world > 1 else name


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


# ----- the run --------------------------------------------------------------------------


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


def fit(cfg: TrainConfig, data: Cifar10 | None = None, show_progress: bool = True) -> TrainResult:
    ctx, device, created = setup_distributed(cfg)
    try:
        return _fit(cfg, data, ctx, device, show_progress)
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def _fit(cfg: TrainConfig, data: Cifar10 | None, ctx: Dist, device: torch.device, show_progress: bool) -> TrainResult:
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT_FILE
    ckpt = _resume_state(cfg, ckpt_path)

    if data is None:
        data = load_cifar10(cfg.data, download=cfg.download)
    n_train = len(data.train)
    per_epoch = min(cfg.max_train_images or n_train, n_train)
    if cfg.batch_size % ctx.world:
        raise ConfigError(f"batch_size {cfg.batch_size} does not split evenly over {ctx.world} processes")
    steps_per_epoch = per_epoch // cfg.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the {per_epoch} training images per epoch")
    total_steps = steps_per_epoch * cfg.epochs
    local_batch = cfg.batch_size // ctx.world
    say = print if ctx.main else (lambda *a, **k: None)

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fastest kernels; not bit-reproducible
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    model: ResNet = resnet50().to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = Ema(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    optimizer = make_optimizer(model, cfg)
    # Same order of images on every rank (each takes its slice of a global batch),
    # but each rank its own augmentation stream.
    perm_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + 1 + ctx.rank)

    epoch, step_in_epoch, global_step = 0, 0, 0
    perm: Tensor | None = None
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss * images, correct, images (this rank)
    res_steps: Counter[int] = Counter()
    partial_seconds = 0.0  # training seconds of the current epoch before an interruption
    history: list[dict[str, Any]] = []
    elapsed = 0.0
    finished = False
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ema is not None:
            ema.module.load_state_dict(ckpt["ema"])
        epoch, step_in_epoch, global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        perm = ckpt["perm"]
        sums = ckpt["sums"][ctx.rank].to(device) if ckpt["world"] == ctx.world else sums
        res_steps = Counter({int(k): v for k, v in ckpt["res_steps"].items()})
        partial_seconds = ckpt["partial_seconds"]
        history, elapsed, finished = list(ckpt["history"]), ckpt["elapsed"], ckpt["finished"]
        perm_gen.set_state(ckpt["perm_gen"])
        set_rng_state(ckpt["rng"], device)
        if ckpt["world"] == ctx.world:
            aug_gen.set_state(ckpt["aug_gen"][ctx.rank])
        else:
            say(f"note: checkpoint made with {ckpt['world']} processes, now {ctx.world}: augmentation re-seeded")
        if finished:
            say(f"{ckpt_path} holds a finished run ({epoch} epochs); nothing left to train")
        else:
            say(f"resuming {ckpt_path}: epoch {epoch + 1}, step {step_in_epoch}/{steps_per_epoch}")

    train_x = torch.from_numpy(data.train.images).to(device)
    train_y = torch.from_numpy(data.train.labels).to(device)
    test_x = torch.from_numpy(data.test.images).to(device)
    test_y = torch.from_numpy(data.test.labels)
    eval_subset = None
    if 0 < cfg.eval_images < len(data.test):
        eval_subset = torch.from_numpy(np.sort(np.random.default_rng(EVAL_SUBSET_SEED).choice(len(data.test), cfg.eval_images, replace=False)))

    step_model: nn.Module = model
    if ctx.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        step_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        step_model = torch.compile(step_model, dynamic=False)
    use_amp = device.type == "cuda" and cfg.amp == "bfloat16"
    sync_every = 1 if device.type == "cpu" else GPU_SYNC_EVERY
    lr_peak = peak_lr(cfg)
    eval_model = ema.module if ema is not None else model

    def checkpoint(stopped: bool) -> None:
        """Every rank calls this (the generators are gathered); rank 0 writes."""
        aug_states = ctx.gather(aug_gen.get_state())
        all_sums = ctx.gather(sums.cpu())
        if not ctx.main:
            return
        if not all_finite(model) or (ema is not None and not all_finite(ema.module)):
            raise TrainingDiverged("the weights hold NaN or infinity; refusing to write a checkpoint")
        save_checkpoint(ckpt_path, {
            "config": cfg.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
            "perm": perm, "sums": all_sums, "res_steps": {str(k): v for k, v in res_steps.items()},
            "partial_seconds": partial_seconds, "history": history, "elapsed": elapsed, "finished": finished,
            "perm_gen": perm_gen.get_state(), "aug_gen": aug_states, "rng": rng_state(device),
            "world": ctx.world, "device": device_name(device, ctx.world), "stopped": stopped,
        })

    def diverged(where: str) -> TrainingDiverged:
        kept = f"the last good checkpoint {ckpt_path} is kept" if ckpt_path.exists() else "no checkpoint was written"
        return TrainingDiverged(
            f"Training diverged: the loss became NaN or infinite {where} (learning rate {lr:.3g} = "
            f"--lr {cfg.lr} x batch {cfg.batch_size} / 256 x schedule). Nothing was saved from that point on; "
            f"{kept}. Lower --lr or lengthen --warmup."
        )

    lr = lr_peak
    with _StopRequests(announce=ctx.main) as stop:
        if ctx.main and not finished:
            plan = ", ".join(f"{r} px: {n}" for r, n in sorted(Counter(resolution_at(s, total_steps, cfg) for s in range(total_steps)).items()))
            say(
                f"training ResNet-50 on {data.name} ({n_train} train / {len(data.test)} test images) on "
                f"{device_name(device, ctx.world)}: {cfg.epochs} epochs x {steps_per_epoch} steps of {cfg.batch_size} images "
                f"({per_epoch} per epoch), peak lr {lr_peak:.3g}; steps per resolution {{{plan}}}",
                flush=True,
            )
        while epoch < cfg.epochs and not finished:
            model.train()
            if perm is None:
                perm = torch.randperm(n_train, generator=perm_gen)[:per_epoch]
                sums.zero_()
                res_steps.clear()
                partial_seconds = 0.0
            perm_dev = perm.to(device)
            bar = Progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", enabled=ctx.main and show_progress)
            bar.begin_at(step_in_epoch)
            bad = torch.zeros((), dtype=torch.bool, device=device)
            start = time.perf_counter()
            res = resolution_at(max(global_step - 1, 0), total_steps, cfg)
            while step_in_epoch < steps_per_epoch:
                res = resolution_at(global_step, total_steps, cfg)
                lr = lr_peak * lr_factor(global_step, total_steps, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                first = step_in_epoch * cfg.batch_size + ctx.rank * local_batch
                idx = perm_dev[first : first + local_batch]
                x = train_batch(train_x[idx], aug_gen, pad=cfg.crop_pad, flip=cfg.flip, cutout=cfg.cutout,
                                resolution=res, channels_last=cfg.channels_last)
                y = train_y[idx]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    logits = step_model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if ema is not None:
                    ema.update(global_step)
                with torch.no_grad():  # device-side sums: no host sync until the next sync point
                    loss = loss.detach()
                    bad |= ~torch.isfinite(loss)
                    sums[0] += loss.double() * y.numel()
                    sums[1] += (logits.argmax(1) == y).sum()
                    sums[2] += y.numel()
                global_step += 1
                step_in_epoch += 1
                res_steps[res] += 1
                asked = bool(cfg.stop_after_steps) and global_step >= cfg.stop_after_steps
                if asked or step_in_epoch % sync_every == 0 or step_in_epoch == steps_per_epoch:
                    is_bad, is_stopped = ctx.any(torch.stack([bad, torch.tensor(stop.signum is not None, device=device)]))
                    if is_bad:
                        raise diverged(f"in epoch {epoch + 1} by step {global_step}")
                    if ctx.main and show_progress:
                        s = sums.tolist()
                        bar.update(step_in_epoch, f"loss {s[0] / s[2]:.3f} acc {s[1] / s[2]:.3f} {res}px lr {lr:.3g}")
                    if asked or is_stopped:
                        bar.close()
                        partial_seconds += time.perf_counter() - start
                        checkpoint(stopped=True)
                        got = None if asked else signal.Signals(stop.signum or signal.SIGTERM)
                        by = got.name if got else "stop_after_steps"
                        say(f"stopped ({by}) at epoch {epoch + 1}, step {step_in_epoch}/{steps_per_epoch}; "
                            f"checkpoint {ckpt_path}; continue with --resume", flush=True)
                        return TrainResult(False, history, ckpt_path, by, int(got) if got else None, eval_model)
            bar.close()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_seconds = partial_seconds + time.perf_counter() - start
            totals = ctx.reduce(sums.clone()).tolist()

            number = epoch + 1
            last = number == cfg.epochs
            test_loss = test_acc = None
            eval_seconds = 0.0
            n_eval = 0
            if last or (cfg.eval_every and number % cfg.eval_every == 0):
                t_eval = time.perf_counter()
                if ctx.main:
                    images = test_x if eval_subset is None else test_x[eval_subset.to(device)]
                    labels = test_y if eval_subset is None else test_y[eval_subset]
                    logits = predict_logits(eval_model, images, device=device, batch_size=cfg.eval_batch_size,
                                            amp=cfg.amp, channels_last=cfg.channels_last)
                    test_loss = F.cross_entropy(logits, labels).item()
                    test_acc = (logits.argmax(1) == labels).double().mean().item()
                    n_eval = len(labels)
                ok = torch.tensor([test_loss is None or math.isfinite(test_loss)], device=device)
                if ctx.any(~ok)[0]:
                    raise diverged(f"in the evaluation after epoch {number}")
                eval_seconds = time.perf_counter() - t_eval
            history.append({
                "epoch": number,
                "train_loss": totals[0] / totals[2],
                "train_acc": totals[1] / totals[2],
                "test_loss": test_loss,
                "test_acc": test_acc,
                "lr": lr,
                "epoch_seconds": train_seconds,
                "images_per_second": totals[2] / train_seconds,
                "resolution": res,
                "resolution_steps": {str(r): n for r, n in sorted(res_steps.items())},
                "eval_seconds": eval_seconds,
                "test_images": n_eval,
                "train_images": int(totals[2]),  # counted on every rank and summed
                "images_seen": global_step * cfg.batch_size,
            })
            elapsed += train_seconds + eval_seconds
            epoch, step_in_epoch, perm = number, 0, None
            finished = last
            # Agreed across ranks: a signal may reach one rank only, and checkpoint() is collective.
            stop_now = ctx.any(torch.tensor([stop.signum is not None], device=device))[0] and not finished
            if finished or stop_now or number % cfg.checkpoint_every == 0:
                checkpoint(stopped=stop_now)
            if ctx.main:
                atomic_write_json(out / HISTORY_FILE, {"config": cfg.to_dict(), "epochs": history})
                h = history[-1]
                test = f" test loss {test_loss:.4f} acc {test_acc:.4f} ({n_eval} images)" if test_acc is not None else ""
                say(f"epoch {number}/{cfg.epochs}: train loss {h['train_loss']:.4f} acc {h['train_acc']:.4f}{test} "
                    f"lr {lr:.3g} {res}px {h['images_per_second']:.0f} img/s {train_seconds:.0f}+{eval_seconds:.0f} s", flush=True)
            if stop_now:
                by = signal.Signals(stop.signum or signal.SIGTERM)
                say(f"stopped ({by.name}) after epoch {number}; checkpoint {ckpt_path}; continue with --resume", flush=True)
                return TrainResult(False, history, ckpt_path, by.name, int(by), eval_model)

    if cfg.export_to:
        if ctx.main:
            from .export import export_run

            export_run(out, Path(cfg.export_to), data=data, device=device, show_progress=show_progress)
        ctx.barrier()
    return TrainResult(True, history, ckpt_path, model=eval_model)


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
