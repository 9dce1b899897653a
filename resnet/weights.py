"""Weights on disk: ours, and anyone's ResNet-50 for CIFAR-10, never unpickled as code.

Ours are float16 safetensors beside a model card (``save_weights`` /
``load_pretrained``). ``load_checkpoint`` reads a checkpoint from elsewhere:
safetensors, or a state dict saved by ``torch.save`` (read with
``weights_only=True``, so a pickle that needs code is refused, never run),
possibly wrapped under "state_dict"/"model" and prefixed by DDP, torch.compile
or Lightning, with either stem, in float16/bfloat16/float32. Every refusal is
one ``WeightsError`` sentence that names the file and what is wrong with it.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .constants import CLASSES, INPUT_SIZE, MEAN, STD
from .files import AssetError, atomic_write_bytes, read_json
from .model import ResNet, Stem, resnet50

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
    model = resnet50(num_classes=num_classes, stem=stem, init_weights=False)  # type: ignore[arg-type]
    try:
        model.load_state_dict(load_state_dict(path), strict=True)  # strict: every weight is the file's
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


def check_card(card: dict[str, Any]) -> None:
    """Refuse weights whose model card names another data contract (classes, mean/std, input size)."""
    for key, expected in data_contract().items():
        if key in card and card[key] != expected:
            raise WeightsError(
                f"The model card says {key}={card[key]!r} but this code uses {expected!r}; "
                "the weights were trained for another data contract."
            )


def load_weights(path: Path | str) -> Checkpoint:
    """Weights a command evaluates: ours or anyone's checkpoint (see ``load_checkpoint``),
    refused when a model card beside them names another data contract."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"No weights file at {path}. {HOW_TO_GET_WEIGHTS}")
    check_card(read_card(path.parent))
    return load_checkpoint(path)


def load_pretrained(path: Path | str | None = None) -> tuple[ResNet, dict[str, Any]]:
    """The shipped model in eval mode (float32) and its model card.

    ``path`` is the weights file or the folder holding it and ``model_card.json``;
    by default the repository's ``assets/``.
    """
    path = Path(path) if path is not None else ASSETS_DIR
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    card = read_card(weights.parent)
    check_card(card)
    arch = card.get("architecture", {})
    model = load_model(weights, stem=arch.get("stem", "cifar"), num_classes=len(CLASSES))
    return model, card


# ----- checkpoints from elsewhere ------------------------------------------------------

# A float32 ResNet-50 is 94 MB; twice that leaves room for optimiser-free
# wrappers and float64 while keeping a Space's memory safe.
MAX_CHECKPOINT_BYTES = 200 * 1024 * 1024
# Where training code usually nests the state dict inside a checkpoint dict.
WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model")
# Prefixes added by DDP (module.), torch.compile (_orig_mod.) and Lightning (model.).
PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.", "model.")
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Only the stem differs between the two layouts, so conv1's kernel tells them apart.
STEM_OF_CONV1: dict[tuple[int, ...], Stem] = {(64, 3, 3, 3): "cifar", (64, 3, 7, 7): "imagenet"}
HOW_TO_SAVE = "save `model.state_dict()` with torch.save or safetensors"


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the model (float32, eval mode) and where it came from."""

    model: ResNet = field(repr=False)
    name: str  # file name
    sha256: str
    format: str  # "safetensors" or "torch.save"
    stem: Stem
    dtypes: tuple[str, ...]  # floating dtypes as stored, e.g. ("bfloat16",)
    prefix: str  # prefix removed from every key ("" if none), e.g. "module."
    wrapper: str | None  # key the state dict was nested under, e.g. "state_dict"

    def describe(self) -> str:
        how = [f"{self.format} state dict" + (f" under {self.wrapper!r}" if self.wrapper else ""),
               "/".join(self.dtypes), f"{self.stem} stem"]
        if self.prefix:
            how.append(f"prefix `{self.prefix}` removed")
        return f"`{self.name}` ({', '.join(how)})"

    def card(self) -> dict[str, Any]:
        """A model card for weights trained elsewhere: what the file says, nothing it does not."""
        return {
            "architecture": {"name": "ResNet-50", "stem": self.stem, "layers": [3, 4, 6, 3],
                             "parameters": sum(p.numel() for p in self.model.parameters())},
            **data_contract(),
            "dataset": "unknown (these weights were not trained by this project)",
            "weights_file": self.name,
            "weights_sha256": self.sha256,
            "notes": f"Weights from {self.describe()}, sha256 {self.sha256[:12]}, trained elsewhere: "
                     "this app knows only what the file holds. They get the same input as the shipped model "
                     "(32x32, normalised with this project's CIFAR-10 mean and std).",
        }


def load_checkpoint(path: Path | str, max_bytes: int = MAX_CHECKPOINT_BYTES) -> Checkpoint:
    """Any ResNet-50 for the 10 CIFAR-10 classes, from safetensors or a torch.save state dict.

    Nothing is unpickled as code; the size is checked before a byte is read.
    """
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise WeightsError(f"There is no weights file at {path}.")
    size = path.stat().st_size
    if size == 0:
        raise WeightsError(f"{name} is empty (0 bytes).")
    if size > max_bytes:
        raise WeightsError(f"{name} is {size / 2**20:.0f} MB; the limit is {max_bytes / 2**20:.0f} MB "
                           "(a float32 ResNet-50 is 94 MB).")
    data = path.read_bytes()
    if data.startswith(b"version https://git-lfs"):
        raise WeightsError(f"{name} is a Git LFS pointer, not the weights; run `git lfs pull`.")
    if data.startswith(b"PK\x03\x04") or data.startswith(b"\x80"):
        kind, obj = "torch.save", _torch_load(data, name)
    elif _looks_like_safetensors(data):
        kind, obj = "safetensors", _safetensors_load(data, name)
    else:
        raise WeightsError(f"{name} is neither a safetensors file nor a torch.save checkpoint; {HOW_TO_SAVE}.")
    return checkpoint_from(obj, name, kind, hashlib.sha256(data).hexdigest())


def checkpoint_from(obj: Any, name: str = "the checkpoint", kind: str = "in-memory", sha256: str = "") -> Checkpoint:
    """The model in what a checkpoint file held: a state dict, perhaps nested and prefixed."""
    state, wrapper = _unwrap(obj, name)
    state, prefix = _strip_prefixes(state)
    stem = check_resnet50_state(state, name)
    dtypes = tuple(sorted({str(v.dtype).removeprefix("torch.") for v in state.values() if v.is_floating_point()}))
    model = resnet50(stem=stem, init_weights=False)
    model.load_state_dict(_as_float32(state, model), strict=True)
    return Checkpoint(model.eval(), name, sha256, kind, stem, dtypes, prefix, wrapper)


def _looks_like_safetensors(data: bytes) -> bool:
    # 8-byte little-endian header length, then a JSON object.
    return len(data) >= 9 and data[8:9] == b"{"


def _safetensors_load(data: bytes, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    (header_len,) = struct.unpack("<Q", data[:8])
    if 8 + header_len > len(data):
        raise WeightsError(
            f"{name} is truncated: its header alone needs {8 + header_len:,} bytes, the file has {len(data):,}."
        )
    try:
        header = json.loads(data[8:8 + header_len])
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise WeightsError(f"{name} has a damaged safetensors header ({exc}).") from exc
    if 8 + header_len + end > len(data):
        raise WeightsError(
            f"{name} is truncated: it has {len(data):,} bytes but its header describes {8 + header_len + end:,}."
        )
    try:
        return load(data)
    except Exception as exc:  # safetensors raises several unrelated types
        raise WeightsError(f"{name} is not a readable safetensors file ({exc}).") from exc


def _torch_load(data: bytes, name: str) -> Any:
    import pickle

    # torch.save's zip archive ends with an end-of-central-directory record; a cut file lacks it.
    if data.startswith(b"PK\x03\x04") and b"PK\x05\x06" not in data[-65_557:]:
        raise WeightsError(f"{name} is truncated: the zip archive torch.save writes has no directory at its end.")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        needs = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" (it names `{needs.group(1)}`)" if needs else ""
        raise WeightsError(
            f"{name} is a pickle that needs code to load{what}, and this app never runs code from a file; "
            f"{HOW_TO_SAVE}."
        ) from exc
    except Exception as exc:  # zip and pickle readers raise RuntimeError, EOFError, ...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsError(f"{name} is damaged or truncated; torch.load says: {first.split('. ')[0]}.") from exc


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj: Any, name: str) -> tuple[dict[str, torch.Tensor], str | None]:
    """The state dict itself, or the one nested under a usual key of a training checkpoint."""
    if _is_state_dict(obj):
        return obj, None
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if _is_state_dict(obj.get(key)):
                return obj[key], key
    if isinstance(obj, dict):
        what = f"a dict with keys {', '.join(map(repr, list(obj)[:5]))}" if obj else "an empty dict"
    else:
        what = f"a {type(obj).__name__}"
    raise WeightsError(f"{name} holds {what}, not a state dict of tensors; {HOW_TO_SAVE}.")


def _strip_prefixes(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Remove DDP / torch.compile / Lightning prefixes that every key carries (in any nesting)."""
    removed = ""
    while True:
        prefix = next((p for p in PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            return state, removed
        state = {k[len(prefix):]: v for k, v in state.items()}
        removed += prefix


@functools.lru_cache(maxsize=2)
def _expected(stem: Stem) -> dict[str, tuple[tuple[int, ...], bool]]:
    """Key -> (shape, is floating) of ResNet-50 with this stem and 10 classes, in module order."""
    return {k: (tuple(v.shape), v.is_floating_point()) for k, v in resnet50(stem=stem, init_weights=False).state_dict().items()}


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "a scalar"


def check_resnet50_state(state: dict[str, torch.Tensor], name: str = "the checkpoint") -> Stem:
    """The stem of a torchvision-named ResNet-50 state dict for 10 classes, or why it is not one.

    Checked in the order a user can act on: a ResNet at all (conv1), the
    number of classes (fc), then every other key and shape, then the values.
    """
    conv1 = state.get("conv1.weight")
    if conv1 is None:
        raise WeightsError(f"{name} does not hold ResNet-50 weights: it has no `conv1.weight` "
                           f"(its first key is `{next(iter(state))}`).")
    stem = STEM_OF_CONV1.get(tuple(conv1.shape))
    if stem is None:
        raise WeightsError(f"{name} does not hold ResNet-50 weights: `conv1.weight` is {_shape(tuple(conv1.shape))}, "
                           "not 64x3x3x3 (CIFAR stem) or 64x3x7x7 (ImageNet stem).")
    fc = state.get("fc.weight")
    if fc is not None and fc.ndim == 2 and fc.shape[1] == 2048 and fc.shape[0] != len(CLASSES):
        raise WeightsError(f"{name} has {fc.shape[0]} output classes (`fc.weight` is {_shape(tuple(fc.shape))}); "
                           f"this explorer explains the {len(CLASSES)} CIFAR-10 classes.")
    expected = _expected(stem)
    for key, (shape, floating) in expected.items():
        if key not in state:
            if key.endswith("num_batches_tracked"):
                continue  # a counter older exports drop; eval mode never reads it
            raise WeightsError(f"{name} does not hold ResNet-50 weights: it has no `{key}`.")
        got = tuple(state[key].shape)
        if got != shape:
            raise WeightsError(f"{name} does not hold ResNet-50 weights: `{key}` is {_shape(got)} where ResNet-50 "
                               f"({stem} stem) has {_shape(shape)}.")
        if floating and state[key].dtype not in FLOAT_DTYPES:
            raise WeightsError(f"{name} stores `{key}` as {str(state[key].dtype).removeprefix('torch.')}; "
                               "only float16, bfloat16 and float32 weights are read.")
    extra = [k for k in state if k not in expected]
    if extra:
        raise WeightsError(f"{name} does not hold ResNet-50 weights: it has `{extra[0]}`, which ResNet-50 does not "
                           f"({len(extra)} such keys; a deeper ResNet?).")
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise WeightsError(f"{name} holds NaN or infinite values (first in `{key}`); these weights are broken.")
    return stem


def _as_float32(state: dict[str, torch.Tensor], model: ResNet) -> dict[str, torch.Tensor]:
    """Floating tensors as float32; counters that were left out taken from the fresh model."""
    full = {k: v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")}
    full.update({k: (v.float() if v.is_floating_point() else v) for k, v in state.items()})
    return full
