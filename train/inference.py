"""Batched inference on uint8 images, shared by the training loop and the evaluation."""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from insight.atlas import sha256_of
from resnet.weights import ASSETS_DIR, WEIGHTS_FILE, Checkpoint, WeightsError, load_weights

from .augment import normalize
from .config import TrainConfig
from .data import Cifar10, DataError, load_cifar10
from .hardware import bf16_pays


def add_model_and_data_arguments(parser: argparse.ArgumentParser, out_help: str) -> None:
    """--weights, --data, --out, --device and --batch-size: what the commands that run
    a trained model over the test split (evaluate, atlas) take alike."""
    parser.add_argument("--weights", default=str(ASSETS_DIR / WEIGHTS_FILE),
                        help="weights: ours (safetensors) or any ResNet-50 checkpoint python app.py --weights accepts")
    parser.add_argument("--data", default=TrainConfig.data, help="CIFAR-10 path (any layout python -m train accepts)")
    parser.add_argument("--out", default=str(ASSETS_DIR), help=out_help)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=250, help="images per forward pass")


def model_and_data(args: argparse.Namespace) -> tuple[torch.device, Checkpoint, Cifar10]:
    """What ``add_model_and_data_arguments`` named, checked and loaded: the device, the weights (ours or
    anyone's checkpoint; a model card beside them is checked), then the data set."""
    device = resolve_device(args.device)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    weights = load_weights(args.weights)
    return device, weights, load_cifar10(args.data)


def weights_command(argv: list[str] | None, prog: str, doc: str, out_help: str,
                    write: Callable[..., dict[str, Any]], report: Callable[[dict[str, Any], str], str]) -> int:
    """A command that writes what ``write(model, test, out, ...)`` computes for given weights on the test split:
    the arguments, their loading, one line for what is wrong (exit 2), ``report(result, out)`` when done."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    add_model_and_data_arguments(parser, out_help=out_help)
    args = parser.parse_args(argv)
    try:
        device, weights, data = model_and_data(args)
        result = write(weights.model, data.test, args.out, device=device, batch_size=args.batch_size,
                       dataset=f"{data.name} test split", weights_sha256=weights.sha256)
    except (DataError, WeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report(result, args.out))
    return 0


def weights_sha256_in(folder: Path, what: str) -> str:
    """sha256 of the weights file in ``folder``, which a file written beside them (``what``) names: right
    when the export has just written the weights there."""
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise WeightsError(f"No weights at {weights} to tie the {what} to; pass weights_sha256 or write the weights first.")
    return sha256_of(weights)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but CUDA is not available here; use --device cpu")
    return device


@contextmanager
def exact_float32() -> Iterator[None]:
    """Float32 that is float32 on CUDA too: TF32 convolutions and matmuls off, restored afterwards.

    The trainer turns TF32 on for speed; an accuracy that a card reports as the
    float32 evaluation must not quietly run with 10-bit mantissas.
    """
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: Tensor | np.ndarray,
    *,
    device: torch.device,
    batch_size: int = 250,
    amp: str = "none",
    channels_last: bool = True,
    flip: bool = False,
    progress: tqdm | None = None,
) -> Tensor:
    """float32 (N, classes) logits on the CPU for uint8 (N, 32, 32, 3) images, in eval mode.

    ``amp="bfloat16"`` runs under bf16 autocast on CUDA and on a CPU with bf16
    units (the quick evaluations during training); the default is float32.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    was_training = model.training
    model.eval()
    use_amp = amp == "bfloat16" and bf16_pays(device)
    out = []
    try:
        for start in range(0, images.shape[0], batch_size):
            x = normalize(images[start : start + batch_size].to(device, non_blocking=True), channels_last)
            if flip:
                x = x.flip(3)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                out.append(model(x).float().cpu())
            if progress is not None:
                progress.update(x.shape[0])
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)
