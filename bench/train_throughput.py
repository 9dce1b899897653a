"""Training throughput: our ResNet-50 and training step vs torchvision's ResNet-50 in the same step.

    python bench/train_throughput.py --device cpu       # float32 and bf16 at 16, 24 and 32 px, batch 128
    python bench/train_throughput.py --device cpu --batch-size 16 --res 16 --steps 6 --precision float32  # < 1 min
    python bench/train_throughput.py --device cuda      # batch 512, 32 px, bf16, channels_last, torch.compile

Both models get the CIFAR stem (3x3 stride-1 conv1, no max-pool) and go through
the identical step of ``train.trainer``: uint8 images resident on the device,
batched crop/flip/cutout, channels_last, autocast in the precision measured,
label-smoothed cross-entropy, SGD with Nesterov momentum and the same
parameter groups, and the EMA update (ours with its activations in place, as
the trainer steps it). Warm-up steps are excluded, and the models alternate in
blocks (A B A B ...) so drift in clock speed or a neighbour's load hits both
alike. Prints images/s of each and ours/torchvision for every precision and
resolution; on a CPU without bf16 units (no amx_bf16 / avx512_bf16) only
float32, which is what the trainer uses there.
"""

from __future__ import annotations

import argparse
import contextlib
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
from train.hardware import bf16_pays, processor_name  # noqa: E402
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

    def step(self, images: torch.Tensor, labels: torch.Tensor, res: int, bf16: bool) -> torch.Tensor:
        cfg = self.cfg
        x = train_batch(images, self.gen, pad=cfg.crop_pad, flip=cfg.flip, cutout=cfg.cutout, resolution=res,
                        channels_last=cfg.channels_last)
        inplace = getattr(self.model, "inplace_activations", contextlib.nullcontext)  # torchvision's are in place already
        with inplace(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
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
    parser.add_argument("--batch-size", type=int, default=0, help="images per step (default: 512 on CUDA, 128 on CPU)")
    parser.add_argument("--steps", type=int, default=0, help="measured steps per model (default: 50 on CUDA, 6 on CPU)")
    parser.add_argument("--warmup", type=int, default=0, help="unmeasured steps per model first (default: 10 on CUDA, 2 on CPU)")
    parser.add_argument("--blocks", type=int, default=0, help="alternations A B A B ... (default: 5 on CUDA, 3 on CPU)")
    parser.add_argument("--res", type=int, nargs="+", default=None,
                        help="training resolutions in px (default: 32 on CUDA; 16 24 32 on CPU)")
    parser.add_argument("--precision", nargs="+", choices=("float32", "bf16"), default=None,
                        help="default: bf16 on CUDA; float32 and bf16 on a CPU with bf16 units, float32 on one without")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile both models (default: on CUDA, as the trainer does; off on CPU)")
    parser.add_argument("--no-ema", action="store_true", help="leave the EMA update out of the step")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    compile = cuda if args.compile is None else args.compile
    batch = args.batch_size or (512 if cuda else 128)
    steps = args.steps or (50 if cuda else 6)
    warmup = args.warmup or (10 if cuda else 2)
    blocks = max(1, min(args.blocks or (5 if cuda else 3), steps))
    per_block = -(-steps // blocks)  # every block the same length; may round the steps up
    resolutions = args.res or ([32] if cuda else [16, 24, 32])
    precisions = args.precision or (["bf16"] if cuda else ["float32", "bf16"] if bf16_pays(device) else ["float32"])
    if cuda:
        torch.backends.cudnn.benchmark = True
    cfg = TrainConfig(batch_size=batch, channels_last=True, ema_decay=0.0 if args.no_ema else TrainConfig.ema_decay)

    torch.manual_seed(0)
    images = torch.randint(0, 256, (batch * 4, 32, 32, 3), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (batch * 4,), device=device)
    trainers = {"ours": Trainer(resnet50(), cfg, device, compile),
                "torchvision": Trainer(torchvision_resnet50(), cfg, device, compile)}
    where = (processor_name(device) if cuda else
             f"CPU ({processor_name(device)}, {torch.get_num_threads()} threads)")
    print(f"{where}; batch {batch}, channels_last, SGD nesterov{' + EMA' if not args.no_ema else ''}"
          f"{', torch.compile' if compile else ''}; {warmup} warm-up steps, then {blocks} blocks x {per_block} steps "
          f"per model, interleaved; the median block is the figure")
    if not cuda and not bf16_pays(device):
        print("  this CPU has no bf16 units (amx_bf16 / avx512_bf16): the trainer trains in float32 here")

    results = []
    for precision in precisions:
        for res in resolutions:
            def run(trainer: Trainer, n: int) -> float:
                sync(device)
                start = time.perf_counter()
                for _ in range(n):
                    lo = (trainer.steps % 4) * batch
                    trainer.step(images[lo : lo + batch], labels[lo : lo + batch], res, precision == "bf16")
                sync(device)
                return time.perf_counter() - start

            for trainer in trainers.values():
                run(trainer, warmup)
            seconds: dict[str, list[float]] = {k: [] for k in trainers}
            for _ in range(blocks):
                for key, trainer in trainers.items():
                    seconds[key].append(run(trainer, per_block))
            # The median block: a neighbour's burst of load hits one block, not the median.
            block_rates = {k: [batch * per_block / t for t in v] for k, v in seconds.items()}
            rates = {k: statistics.median(v) for k, v in block_rates.items()}
            ratio = rates["ours"] / rates["torchvision"]
            results.append({"precision": precision, "res": res, "images_per_second": rates,
                            "ratio_ours_over_torchvision": ratio})
            print(f"  {precision:8s} {res:2d} px: ours {rates['ours']:7.1f}  torchvision {rates['torchvision']:7.1f} "
                  f"images/s (ranges {min(block_rates['ours']):.1f}..{max(block_rates['ours']):.1f}, "
                  f"{min(block_rates['torchvision']):.1f}..{max(block_rates['torchvision']):.1f}); "
                  f"ours / torchvision = {ratio:.3f}", flush=True)
    worst = min(r["ratio_ours_over_torchvision"] for r in results)
    print(f"  ours / torchvision = {worst:.3f} at worst (goal >= 1.0)")
    # The headline (first keys, read by train/gpu_run.sh): the last configuration, the trainer's own at full size.
    head = results[-1]
    print(json.dumps({"device": where, "batch_size": batch, "res": head["res"], "precision": head["precision"],
                      "compile": compile, "images_per_second": head["images_per_second"],
                      "ratio_ours_over_torchvision": head["ratio_ours_over_torchvision"], "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
