"""The run folder's files: the checkpoint (torch.save of plain types and tensors, written
atomically, read with weights_only=True) and the names of what sits beside it."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from resnet.files import atomic_write_bytes

from .config import ConfigError

CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.json"
FORMAT = 2  # 2: training wall clock, replay state


def all_finite(module: nn.Module) -> bool:
    """No NaN or infinity in any floating tensor: a checkpoint or export of such weights is refused."""
    return all(bool(torch.isfinite(t).all()) for t in module.state_dict().values() if t.is_floating_point())


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"No checkpoint at {path}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling raises many types
        raise ConfigError(f"{path} is not a readable checkpoint ({exc}). Start afresh with --overwrite.") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a checkpoint of this trainer (format {FORMAT}). Start afresh with --overwrite.")
    return state


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global RNGs (torch, CUDA, NumPy, Python) as checkpoint-safe plain types and tensors."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
