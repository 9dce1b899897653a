"""Training throughput: our ResNet-50 and training step vs torchvision's ResNet-50 in the same step.

    python bench/train_throughput.py --device cpu --batch-size 16 --res 16 --steps 6     # < 1 min
    python bench/train_throughput.py --device cuda      # batch 512, 32 px, bf16, channels_last, torch.compile

Both models get the CIFAR stem (3x3 stride-1 conv1, no max-pool) and go through
the identical step of ``train.trainer``: uint8 images resident on the device,
batched crop/flip/cutout, bf16 autocast + channels_last on CUDA (float32 on
CPU), label-smoothed cross-entropy, SGD with Nesterov momentum and the same
parameter groups, and the EMA update. Warm-up steps are excluded, and the
models alternate in blocks (A B A B ...) so drift in clock speed or a
neighbour's load hits both alike. Prints images/s of each and ours/torchvision.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resnet.model import resnet50  # noqa: E402
from train.augment import train_batch  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.inference import resolve_device  # noqa: E402
from train.trainer import Ema, make_optimizer  # noqa: E402


def torchvision_resnet50() -> nn.Module:
    import torchvision

    model = torchvision.models.resnet50(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


class Trainer:
    """One model with its optimizer and EMA, stepping exactly like train.trainer does."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, device: torch.device, compile: bool) -> None:
        self.model = model.to(device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.model, cfg)
        self.ema = Ema(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.step_model = torch.compile(self.model, dynamic=False) if compile else self.model
        self.cfg, self.device = cfg, device
        self.gen = torch.Generator(device=device).manual_seed(0)
        self.steps = 0

    def step(self, images: torch.Tensor, labels: torch.Tensor, res: int) -> torch.Tensor:
        cfg = self.cfg
        x = train_batch(images, self.gen, pad=cfg.crop_pad, flip=cfg.flip, cutout=cfg.cutout, resolution=res,
                        channels_last=cfg.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            logits = self.step_model(x)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.steps)
        self.steps += 1
        return loss.detach()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=0, help="images per step (default: 512 on CUDA, 16 on CPU)")
    parser.add_argument("--steps", type=int, default=0, help="measured steps per model (default: 50 on CUDA, 8 on CPU)")
    parser.add_argument("--warmup", type=int, default=0, help="unmeasured steps per model first (default: 10 on CUDA, 2 on CPU)")
    parser.add_argument("--blocks", type=int, default=0, help="alternations A B A B ... (default: 5 on CUDA, 4 on CPU)")
    parser.add_argument("--res", type=int, default=32, help="training resolution in px")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile both models (default: on CUDA, as the trainer does; off on CPU)")
    parser.add_argument("--no-ema", action="store_true", help="leave the EMA update out of the step")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    compile = cuda if args.compile is None else args.compile
    batch = args.batch_size or (512 if cuda else 16)
    steps = args.steps or (50 if cuda else 8)
    warmup = args.warmup or (10 if cuda else 2)
    blocks = max(1, min(args.blocks or (5 if cuda else 4), steps))
    per_block = -(-steps // blocks)  # every block the same length; may round the steps up
    if cuda:
        torch.backends.cudnn.benchmark = True
    cfg = TrainConfig(batch_size=batch, channels_last=True, ema_decay=0.0 if args.no_ema else TrainConfig.ema_decay)

    torch.manual_seed(0)
    images = torch.randint(0, 256, (batch * 4, 32, 32, 3), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (batch * 4,), device=device)
    trainers = {"ours": Trainer(resnet50(), cfg, device, compile),
                "torchvision": Trainer(torchvision_resnet50(), cfg, device, compile)}

    def run(trainer: Trainer, n: int) -> float:
        sync(device)
        start = time.perf_counter()
        for i in range(n):
            lo = (trainer.steps % 4) * batch
            trainer.step(images[lo : lo + batch], labels[lo : lo + batch], args.res)
        sync(device)
        return time.perf_counter() - start

    for trainer in trainers.values():
        run(trainer, warmup)
    seconds = {k: [] for k in trainers}
    for _ in range(blocks):
        for key, trainer in trainers.items():
            seconds[key].append(run(trainer, per_block))

    # The median block is the headline: a neighbour's burst of load hits one block, not the median.
    block_rates = {k: [batch * per_block / t for t in v] for k, v in seconds.items()}
    rates = {k: statistics.median(v) for k, v in block_rates.items()}
    overall = {k: batch * per_block * len(v) / sum(v) for k, v in seconds.items()}
    where = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    precision = "bf16 autocast, channels_last" if cuda else "float32, channels_last"
    print(f"{where}; batch {batch}, {args.res}x{args.res} px, {precision}, SGD nesterov"
          f"{' + EMA' if not args.no_ema else ''}{', torch.compile' if compile else ''}; "
          f"{warmup} warm-up steps, then {blocks} blocks x {per_block} steps per model, interleaved")
    for k in trainers:
        print(f"  {k:12s} {rates[k]:9.1f} images/s median of blocks "
              f"(all blocks {overall[k]:.1f}; range {min(block_rates[k]):.1f}..{max(block_rates[k]):.1f})")
    ratio = rates["ours"] / rates["torchvision"]
    print(f"  ours / torchvision = {ratio:.3f} (goal >= 1.0, stretch 1.5)")
    print(json.dumps({"device": where, "batch_size": batch, "res": args.res, "compile": compile,
                      "images_per_second": rates, "ratio_ours_over_torchvision": ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
