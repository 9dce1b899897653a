"""Shipped weights: safetensors in float16 on disk, float32 in memory, no pickle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .constants import CLASSES, INPUT_SIZE, MEAN, STD
from .files import AssetError, atomic_write_bytes, read_json
from .model import ResNet, resnet50

ASSETS_DIR: Path = Path(__file__).resolve().parent.parent / "assets"
WEIGHTS_FILE = "resnet50_cifar10.safetensors"
CARD_FILE = "model_card.json"

HOW_TO_GET_WEIGHTS = (
    "The app ships its weights in assets/ (git clone brings them; if the file is a "
    "Git LFS pointer run `git lfs pull`). To train your own: "
    "`python -m train --data PATH_TO_CIFAR10 --out assets` (see README, 'Training')."
)


class WeightsError(RuntimeError):
    """The weights file is missing, unreadable or does not fit the model."""


def data_contract() -> dict[str, Any]:
    """The part of the model card that app and train must agree on."""
    return {"classes": list(CLASSES), "mean": list(MEAN), "std": list(STD), "input_size": INPUT_SIZE}


def save_weights(model: nn.Module, path: Path | str, metadata: dict[str, str] | None = None) -> Path:
    """Store a state dict as float16 safetensors (integers, e.g. BN counters, kept as they are)."""
    from safetensors.torch import save

    state = {
        k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()).contiguous()
        for k, v in model.state_dict().items()
    }
    path = Path(path)
    atomic_write_bytes(path, save(state, metadata=metadata or {}))
    return path


def load_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """Read a safetensors file into float32 tensors, with a clear error when that fails."""
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"No weights file at {path}. {HOW_TO_GET_WEIGHTS}")
    data = path.read_bytes()
    if data.startswith(b"version https://git-lfs"):
        raise WeightsError(f"{path} is a Git LFS pointer, not the weights. Run `git lfs pull`. {HOW_TO_GET_WEIGHTS}")
    try:
        state = load(data)
    except Exception as exc:  # safetensors raises several unrelated types
        raise WeightsError(f"{path} is not a readable safetensors file ({exc}). {HOW_TO_GET_WEIGHTS}") from exc
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def load_model(path: Path | str, stem: str = "cifar", num_classes: int = len(CLASSES)) -> ResNet:
    model = resnet50(num_classes=num_classes, stem=stem)  # type: ignore[arg-type]
    try:
        model.load_state_dict(load_state_dict(path), strict=True)
    except RuntimeError as exc:
        if isinstance(exc, WeightsError):
            raise
        raise WeightsError(f"{path} does not hold ResNet-50 ({stem} stem) weights: {exc}") from exc
    return model.eval()


def read_card(assets_dir: Path | str = ASSETS_DIR) -> dict[str, Any]:
    """The model card beside the weights, or {} when there is none (weights trained elsewhere)."""
    try:
        return read_json(Path(assets_dir) / CARD_FILE)
    except AssetError as exc:
        if exc.missing:
            return {}
        raise WeightsError(f"The model card is unreadable: {exc}") from exc


def load_pretrained(path: Path | str | None = None) -> tuple[ResNet, dict[str, Any]]:
    """The shipped model in eval mode (float32) and its model card.

    ``path`` is the weights file or the folder holding it and ``model_card.json``;
    by default the repository's ``assets/``.
    """
    path = Path(path) if path is not None else ASSETS_DIR
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    card = read_card(weights.parent)
    contract = data_contract()
    for key, expected in contract.items():
        if key in card and card[key] != expected:
            raise WeightsError(
                f"The model card says {key}={card[key]!r} but this code uses {expected!r}; "
                "the weights were trained for another data contract."
            )
    arch = card.get("architecture", {})
    model = load_model(weights, stem=arch.get("stem", "cifar"), num_classes=len(CLASSES))
    return model, card
