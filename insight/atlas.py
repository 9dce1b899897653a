"""The channel atlas: for every channel of the stem and of every stage, the test images that excite it most.

OpenAI Microscope does this for ImageNet models; here it is exhaustive over the
CIFAR-10 test split. For each channel of stem (64), layer1 (256), layer2 (512),
layer3 (1024) and layer4 (2048) the atlas holds

* its ``TOP_K`` test images ranked by the *spatial maximum* of the channel's
  map, with the cell (row-major index into the stage's h x w grid) where that
  maximum sits. Ties go to the earlier test image, and within a map to the
  first cell in row-major order, so the ranking is a pure function of the
  activations;
* its mean activation per class: the map's spatial mean (what global average
  pooling sees), averaged over the test images of each class.

Per stage, ``stage_summary`` derives from those arrays how many channels are
*dead* (never positive: every map here follows a ReLU, so the channel is 0 on
every cell of every test image) and how *class-selective* the live ones are,
with the selectivity index of Morcos et al. 2018 ("On the importance of single
directions for generalization")::

    SI = (mu_max - mu_rest) / (mu_max + mu_rest)

where ``mu_max`` is the largest of the channel's 10 class means and ``mu_rest``
the mean of the other nine. Class means are >= 0 after a ReLU, so SI lies in
[0, 1]: 0 when every class excites the channel equally, 1 when only one does.

The file (``atlas_bytes`` / ``load_atlas``) is one .npz: the arrays above, the
labels of all test images, and only the test images some channel's top list
points at with a positive activation (a dead channel's "top images" are
arbitrary zeros and are not shipped). Each image is stored as the data set's own
file for it when one is given and decodes to exactly its pixels (the offline
pack's JPEGs: 0.92 KB each), else losslessly as WebP (1.57 KB each); either
way the app gets back the very pixels the network saw. All 10,000 test images
as their JPEG files would be 9.2 MB, so the file stays under ``SIZE_TARGET``
whichever images a model's channels pick (6,090 lossless WebP images were
9.1 MiB against 16.6 MiB of deflated raw pixels). A JSON ``meta`` entry says
which weights (sha256) and data set it was computed from and how long it took.

torch, numpy and Pillow only: ``python -m train.atlas`` runs it on a bare GPU box.
"""

from __future__ import annotations

import io
import json
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from resnet.constants import CLASSES, INPUT_SIZE, NUM_CLASSES
from resnet.model import FEATURE_NAMES, ResNet
from resnet import preprocess
from resnet.preprocess import images_to_pixels, normalise

ATLAS_FILE = "channel_atlas.npz"
FORMAT = 1  # bump when the arrays change meaning
TOP_K = 9
SIZE_TARGET = 10_000_000  # bytes (10 MB) the shipped file should stay under
SELECTIVE = 0.5  # SI at or above which a channel counts as selective in the summary
HOW_TO_MAKE = (
    "Run `python -m train.atlas --weights assets/resnet50_cifar10.safetensors --data PATH_TO_CIFAR10 --out assets` "
    "to compute it for the shipped weights."
)


class AtlasError(ValueError):
    """The atlas file is missing, unreadable or inconsistent; the message says which in a sentence."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


@dataclass(frozen=True)
class StageAtlas:
    """One stage's channels: C channels, each with its top-K test images and its 10 class means."""

    name: str
    grid: tuple[int, int]  # (h, w) of the stage's feature map
    top_rows: np.ndarray  # int32 (C, K): test-split rows, highest spatial max first
    top_values: np.ndarray  # float32 (C, K): the spatial max of the channel on each of them
    top_cells: np.ndarray  # int32 (C, K): where that max sits, row-major in the (h, w) grid
    class_means: np.ndarray  # float32 (C, 10): mean over each class's images of the map's spatial mean

    @property
    def channels(self) -> int:
        return int(self.top_rows.shape[0])

    @property
    def dead(self) -> np.ndarray:
        """bool (C,): never positive on any test image."""
        return ~(self.top_values[:, 0] > 0)


@dataclass(frozen=True)
class Atlas:
    stages: dict[str, StageAtlas]  # keyed by FEATURE_NAMES, in order
    labels: np.ndarray  # int64 (N,): the class of every test image, in test-split order
    image_rows: np.ndarray  # int32 (M,) sorted: the test images stored in the file
    images: Any  # uint8 (M, 32, 32, 3) as computed; a lazy WebP decoder with the same indexing once loaded
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return int(self.labels.shape[0])

    @property
    def top_k(self) -> int:
        return int(next(iter(self.stages.values())).top_rows.shape[1])

    def image(self, row: int) -> np.ndarray:
        where = int(np.searchsorted(self.image_rows, row))
        if where >= len(self.image_rows) or self.image_rows[where] != row:
            raise AtlasError(f"Test image #{row} is not stored in the atlas: no channel ranks it among its top images.")
        return self.images[where]

    def stage(self, name: str) -> StageAtlas:
        if name not in self.stages:
            raise AtlasError(f"Unknown stage {name!r}; the atlas covers {', '.join(self.stages)}.")
        return self.stages[name]


# ----- computing it ----------------------------------------------------------------------


def selectivity(class_means: np.ndarray) -> np.ndarray:
    """The class selectivity index (module docstring) of every row of (C, 10) class means; NaN for all-zero rows."""
    means = np.asarray(class_means, dtype=np.float64)
    top = means.max(axis=1)
    rest = (means.sum(axis=1) - top) / (means.shape[1] - 1)
    total = top + rest
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (top - rest) / np.where(total > 0, total, 1.0), np.nan)


def stage_summary(stage: StageAtlas) -> dict[str, Any]:
    """Plain numbers for one stage: dead channels, and how class-selective the live ones are."""
    dead = stage.dead
    si = selectivity(stage.class_means)[~dead]
    preferred = stage.class_means[~dead].argmax(axis=1)
    return {
        "stage": stage.name,
        "channels": stage.channels,
        "dead": int(dead.sum()),
        "selectivity_median": float(np.median(si)) if si.size else None,
        "selectivity_mean": float(si.mean()) if si.size else None,
        "selective": int((si >= SELECTIVE).sum()),
        "preferred_class_counts": np.bincount(preferred, minlength=NUM_CLASSES).tolist(),
    }


def _merge_top(
    best: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    new: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the k highest values per column of (values, rows, cells), earlier rows first among equals.

    ``best`` holds rows that all come before ``new``'s and is already ordered
    by (value desc, row asc); a stable sort of the concatenation on the value
    alone therefore keeps that order among equal values.
    """
    values, rows, cells = (torch.cat([b, n]) for b, n in zip(best, new))
    order = torch.sort(values, dim=0, descending=True, stable=True).indices[:k]
    return values.gather(0, order), rows.gather(0, order), cells.gather(0, order)


@torch.inference_mode()
def compute_atlas(
    model: ResNet,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    k: int = TOP_K,
    batch_size: int = 250,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> Atlas:
    """The atlas of ``model`` over uint8 (N, 32, 32, 3) ``images`` with int ``labels`` (N,).

    One float32 forward pass per batch in eval mode; each batch's maps are
    reduced on the device to per-channel spatial max, argmax cell and spatial
    mean, and merged into running top-k lists, so memory does not grow with N.
    ``progress`` is called with the number of images done after each batch.
    """
    images = np.asarray(images)
    labels = np.asarray(labels).astype(np.int64)
    n = len(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
        raise ValueError(f"images must be uint8 (N, {INPUT_SIZE}, {INPUT_SIZE}, 3), got {images.dtype} {images.shape}")
    if labels.shape != (n,) or n == 0 or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise ValueError(f"labels must be ({n},) class indices 0..{NUM_CLASSES - 1}, and there must be images")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    if (counts == 0).any():
        absent = ", ".join(CLASSES[c] for c in np.flatnonzero(counts == 0))
        raise ValueError(f"every class needs at least one image for its class mean; none of: {absent}")
    k = min(int(k), n)
    device = torch.device(device)
    was_training = model.training
    model.eval()
    channels = {f.name: f.channels for f in model.feature_info}
    best: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {
        name: (
            torch.empty(0, c, device=device),
            torch.empty(0, c, dtype=torch.long, device=device),
            torch.empty(0, c, dtype=torch.long, device=device),
        )
        for name, c in channels.items()
    }
    # float64 sums: 1,000 images a class of float32 means would round visibly in the last digits.
    sums = {name: torch.zeros(NUM_CLASSES, c, dtype=torch.float64, device=device) for name, c in channels.items()}
    grids: dict[str, tuple[int, int]] = {}
    all_labels = torch.from_numpy(labels).to(device)
    try:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            x = normalise(images_to_pixels(torch.from_numpy(images[start:stop]).to(device)))
            features = model.forward_intermediates(x).features
            batch_rows = torch.arange(start, stop, device=device)
            for name, f in features.items():
                b, c, h, w = f.shape
                grids[name] = (h, w)
                flat = f.float().reshape(b, c, h * w)
                peak, cell = flat.max(dim=2)  # first maximal cell on ties
                rows = batch_rows[:, None].expand(b, c)
                best[name] = _merge_top(best[name], (peak, rows, cell), k)
                sums[name].index_add_(0, all_labels[start:stop], flat.mean(dim=2).double())
            if progress is not None:
                progress(stop)
    finally:
        model.train(was_training)
    stages = {}
    for name in FEATURE_NAMES:
        values, rows, cells = (t.cpu().numpy() for t in best[name])
        means = sums[name].cpu().numpy() / counts[:, None]
        stages[name] = StageAtlas(
            name, grids[name], rows.T.astype(np.int32), values.T.astype(np.float32), cells.T.astype(np.int32),
            means.T.astype(np.float32),
        )
    shown = referenced_rows(stages)
    return Atlas(stages, labels, shown, np.ascontiguousarray(images[shown]))


def referenced_rows(stages: dict[str, StageAtlas]) -> np.ndarray:
    """Sorted test rows that some channel ranks among its top images with a positive activation."""
    picked = [s.top_rows[s.top_values > 0] for s in stages.values()]
    return np.unique(np.concatenate(picked)).astype(np.int32) if picked else np.empty(0, np.int32)


# ----- the file ----------------------------------------------------------------------------

IMAGE_FORMAT = "image-files"  # each image an encoded file Pillow reads back to exactly its pixels


def encode_images(images: np.ndarray, sources: Sequence[bytes | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (M, 32, 32, 3) -> (one uint8 blob of image files, int64 offsets (M + 1,)).

    ``sources[i]``, when given, is the data set's own file of image i (e.g. the
    offline pack's JPEG): it is stored as it is if it decodes to exactly the
    image's pixels, the smallest lossless choice. Otherwise the image becomes a
    lossless WebP; Pillow's ``method=1`` packs CIFAR images a little tighter than
    its slowest setting (1.51 against 1.57 KB each on 500 test images) in 1/50th
    of the time.
    """
    from PIL import Image

    parts = []
    for i, image in enumerate(images):
        image = np.ascontiguousarray(image, dtype=np.uint8)
        source = sources[i] if sources is not None else None
        if source is not None and _decodes_to(source, image):
            parts.append(bytes(source))
            continue
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="WEBP", lossless=True, quality=100, method=1)
        parts.append(buffer.getvalue())
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(p) for p in parts])
    return np.frombuffer(b"".join(parts), dtype=np.uint8).copy(), offsets


def _decodes_to(data: bytes, image: np.ndarray) -> bool:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.array_equal(np.asarray(im.convert("RGB"), dtype=np.uint8), image)
    except Exception:  # an unreadable source is simply not used
        return False


def decode_image(blob: np.ndarray, offsets: np.ndarray, i: int) -> np.ndarray:
    """The i-th image of ``encode_images``' blob, as uint8 (32, 32, 3)."""
    try:
        return preprocess.decode_cifar(blob[int(offsets[i]) : int(offsets[i + 1])].tobytes())
    except ValueError as exc:
        raise AtlasError(f"Stored image {i} of the atlas is {exc}. {HOW_TO_MAKE}") from exc


STAGE_ARRAYS = ("grid", "top_rows", "top_values", "top_cells", "class_means")


def atlas_arrays(atlas: Atlas, sources: Sequence[bytes | None] | None = None) -> dict[str, np.ndarray]:
    """Everything the file holds, as named arrays; ``sources`` are the stored images' own files, if any
    (aligned with ``atlas.image_rows``: see ``encode_images``)."""
    blob, offsets = encode_images(atlas.images, sources)
    meta = {**atlas.meta, "format": FORMAT, "image_format": IMAGE_FORMAT, "top_k": atlas.top_k,
            "n_images": atlas.n_images, "stages": list(atlas.stages)}
    arrays: dict[str, np.ndarray] = {
        "meta": np.array(json.dumps(meta, sort_keys=True)),
        "labels": atlas.labels.astype(np.uint8),
        "image_rows": atlas.image_rows.astype(np.int32),
        "image_data": blob,
        "image_offsets": offsets,
    }
    for name, s in atlas.stages.items():
        # int16 rows/cells halve what deflate has to squeeze: 10,000 rows and 32x32 cells both fit.
        arrays.update({
            f"{name}.grid": np.asarray(s.grid, dtype=np.int32),
            f"{name}.top_rows": s.top_rows.astype(np.int16 if atlas.n_images <= np.iinfo(np.int16).max else np.int32),
            f"{name}.top_values": s.top_values.astype(np.float32),
            f"{name}.top_cells": s.top_cells.astype(np.int16 if s.grid[0] * s.grid[1] <= np.iinfo(np.int16).max else np.int32),
            f"{name}.class_means": s.class_means.astype(np.float32),
        })
    return arrays


def atlas_bytes(atlas: Atlas, sources: Sequence[bytes | None] | None = None) -> bytes:
    """The .npz file (deflated) for ``atlas``; ``load_atlas`` reads it back."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **atlas_arrays(atlas, sources))
    return buffer.getvalue()


def _fail(path: Path | str, problem: str) -> AtlasError:
    return AtlasError(f"The channel atlas {Path(path).name} {problem}. {HOW_TO_MAKE}")


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise AtlasError(f"No channel atlas at {path}. {HOW_TO_MAKE}", missing=True)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise _fail(path, f"is not a readable .npz file ({exc})") from exc


def validate_arrays(arrays: dict[str, np.ndarray], path: Path | str = ATLAS_FILE) -> Atlas:
    """Check the file's arrays against the contract (shapes, ranges, order); return the ``Atlas``.

    A top list must be sorted by value, point at existing test images and
    cells, and every image it ranks with a positive value must be stored, so
    nothing the app shows can index past an array.
    """
    missing = [k for k in ("meta", "labels", "image_rows", "image_data", "image_offsets") if k not in arrays]
    if missing:
        raise _fail(path, f"lacks the arrays {', '.join(missing)}")
    try:
        meta = json.loads(str(arrays["meta"]))
    except ValueError as exc:
        raise _fail(path, f"has unreadable metadata ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _fail(path, f"is format {meta.get('format') if isinstance(meta, dict) else None!r}; this code reads format {FORMAT}")
    if meta.get("image_format") != IMAGE_FORMAT:
        raise _fail(path, f"stores its images as {meta.get('image_format')!r}, not {IMAGE_FORMAT!r}")
    labels = arrays["labels"]
    if labels.ndim != 1 or not len(labels) or not np.issubdtype(labels.dtype, np.integer) or labels.max() >= NUM_CLASSES:
        raise _fail(path, f"has labels {labels.dtype} {labels.shape}; expected (N,) class indices 0..{NUM_CLASSES - 1}")
    n = len(labels)
    rows, blob, offsets = arrays["image_rows"], arrays["image_data"], arrays["image_offsets"]
    if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer) or (len(rows) and (rows.min() < 0 or rows.max() >= n)):
        raise _fail(path, f"stores images of rows outside the {n} test images")
    if np.any(np.diff(rows.astype(np.int64)) <= 0):
        raise _fail(path, "stores its images out of order or twice")
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise _fail(path, "has image data that is not a byte string")
    if (offsets.shape != (len(rows) + 1,) or not np.issubdtype(offsets.dtype, np.integer) or offsets[0] != 0
            or offsets[-1] != len(blob) or np.any(np.diff(offsets) <= 0)):
        raise _fail(path, f"has image offsets that do not cut its {len(blob)} bytes into {len(rows)} images")
    stages: dict[str, StageAtlas] = {}
    k = None
    for name in FEATURE_NAMES:
        absent = [f"{name}.{a}" for a in STAGE_ARRAYS if f"{name}.{a}" not in arrays]
        if absent:
            raise _fail(path, f"lacks the arrays {', '.join(absent)}")
        stages[name] = _stage(name, {a: arrays[f"{name}.{a}"] for a in STAGE_ARRAYS}, n, path)
        k = stages[name].top_rows.shape[1] if k is None else k
        if stages[name].top_rows.shape[1] != k:
            raise _fail(path, f"ranks {stages[name].top_rows.shape[1]} images per channel in {name} but {k} elsewhere")
    needed = referenced_rows(stages)
    if not np.isin(needed, rows).all():
        raise _fail(path, f"lacks {int((~np.isin(needed, rows)).sum())} of the test images its channels rank")
    return Atlas(stages, labels.astype(np.int64), rows.astype(np.int32), _LazyImages(blob, offsets.astype(np.int64)), meta)


def _stage(name: str, a: dict[str, np.ndarray], n: int, path: Path | str) -> StageAtlas:
    grid = a["grid"]
    if grid.shape != (2,) or not np.issubdtype(grid.dtype, np.integer) or (grid < 1).any():
        raise _fail(path, f"has a {name} grid of {grid.tolist()}; expected (h, w)")
    h, w = int(grid[0]), int(grid[1])
    rows, values, cells, means = a["top_rows"], a["top_values"], a["top_cells"], a["class_means"]
    if rows.ndim != 2 or rows.shape[1] < 1 or values.shape != rows.shape or cells.shape != rows.shape:
        raise _fail(path, f"has {name} top lists of shapes {rows.shape}, {values.shape}, {cells.shape}; expected one (C, K)")
    if means.shape != (rows.shape[0], NUM_CLASSES):
        raise _fail(path, f"has {name} class means of shape {means.shape}; expected ({rows.shape[0]}, {NUM_CLASSES})")
    if not all(np.issubdtype(x.dtype, np.integer) for x in (rows, cells)):
        raise _fail(path, f"has non-integer {name} rows or cells")
    if rows.min() < 0 or rows.max() >= n:
        raise _fail(path, f"ranks {name} test images outside rows 0..{n - 1}")
    if cells.min() < 0 or cells.max() >= h * w:
        raise _fail(path, f"has {name} cells outside its {h}x{w} grid")
    for what, x in (("activations", values), ("class means", means)):
        # Every map follows a ReLU: a negative or non-finite number means the file was not made by this code.
        if not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all() or (x < 0).any():
            raise _fail(path, f"has {name} {what} that are not finite and >= 0")
    if np.any(np.diff(values, axis=1) > 0):
        raise _fail(path, f"has {name} top lists that are not sorted, highest first")
    return StageAtlas(name, (h, w), rows.astype(np.int32), values.astype(np.float32), cells.astype(np.int32),
                      means.astype(np.float32))


class _LazyImages:
    """The stored WebP images, decoded one at a time when asked (a channel needs 9 of thousands)."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray) -> None:
        self.blob, self.offsets = blob, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return decode_image(self.blob, self.offsets, int(i))

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def load_atlas(path: Path | str) -> Atlas:
    """Read and validate a channel atlas file; ``AtlasError`` (``missing`` when there is none) says what is wrong."""
    path = Path(path)
    return validate_arrays(_read_arrays(path), path)


class LazyAtlas:
    """The app's atlas: read and validated the first time a view asks, then kept.

    Constructing it reads nothing, so a missing or broken file costs the rest
    of the app nothing; ``problem()`` gives the sentence to show instead.
    ``served_sha256`` says which weights the app serves (called once, on first
    use), so ``matches_weights`` can tell whether the atlas describes them.
    """

    def __init__(self, path: Path | str, served_sha256: Callable[[], str | None]) -> None:
        self.path = Path(path)
        self._served = served_sha256
        self._lock = threading.Lock()  # Gradio calls handlers from worker threads
        self._atlas: Atlas | None = None
        self._error: AtlasError | None = None
        self._served_sha256: str | None = None

    def get(self) -> Atlas:
        with self._lock:
            if self._atlas is None and self._error is None:
                try:
                    self._atlas = load_atlas(self.path)
                except AtlasError as exc:
                    self._error = exc
            if self._error is not None:
                raise self._error
            assert self._atlas is not None
            return self._atlas

    def problem(self) -> str | None:
        try:
            self.get()
        except AtlasError as exc:
            return str(exc)
        return None

    def served_sha256(self) -> str | None:
        with self._lock:
            if self._served_sha256 is None:
                self._served_sha256 = self._served()
            return self._served_sha256

    def matches_weights(self) -> bool:
        """True when the atlas was computed from exactly the weights the app serves."""
        made_for = self.get().meta.get("weights_sha256")
        return made_for is not None and made_for == self.served_sha256()


def sha256_of(path: Path | str) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----- what the explorer shows ---------------------------------------------------------------


def check_channel(atlas: Atlas, stage: str, channel: Any) -> tuple[StageAtlas, int]:
    """The stage and a whole channel number inside it, or an ``AtlasError`` sentence."""
    entry = atlas.stage(stage)
    try:
        value = float(channel)
    except (TypeError, ValueError):
        raise AtlasError(f"A channel is a whole number; got {channel!r}.") from None
    if not value.is_integer() or not 0 <= value < entry.channels:
        raise AtlasError(f"{stage} has {entry.channels} channels, numbered 0..{entry.channels - 1}; got {channel!r}.")
    return entry, int(value)


def aligned_predictions(atlas: Atlas, evaluation: dict[str, Any]) -> tuple[np.ndarray | None, str]:
    """evaluation.json's per-image predictions when its rows are the atlas's rows, else (None, why not).

    Both files index the test split in ``train.data.load_cifar10``'s order;
    they line up when they count the same images of the same data set with the
    same labels, and describe the same weights (where both record them).
    """
    labels = np.asarray(evaluation["predictions"]["label"])
    why = None
    if int(evaluation["n"]) != atlas.n_images:
        why = f"evaluation.json covers {evaluation['n']} test images, the atlas {atlas.n_images}"
    elif not np.array_equal(labels, atlas.labels):
        why = "evaluation.json lists the test images with other labels than the atlas"
    elif evaluation.get("dataset") and atlas.meta.get("dataset") and evaluation["dataset"] != atlas.meta["dataset"]:
        why = f"evaluation.json is on {evaluation['dataset']}, the atlas on {atlas.meta['dataset']}"
    elif (evaluation.get("weights_sha256") and atlas.meta.get("weights_sha256")
          and evaluation["weights_sha256"] != atlas.meta["weights_sha256"]):
        why = "evaluation.json and the atlas were computed for different weights"
    if why is not None:
        return None, f"Predicted classes are not shown: {why}."
    return np.asarray(evaluation["predictions"]["pred"], dtype=np.int64), ""


@dataclass(frozen=True)
class TopImage:
    row: int  # test-split row
    image: np.ndarray  # uint8 (32, 32, 3)
    activation: float  # the channel's spatial max on it
    cell: tuple[int, int]  # (row, column) of that max in the stage's grid
    label: int
    pred: int | None  # None when evaluation.json does not line up with the atlas


def top_images(atlas: Atlas, stage: str, channel: int, preds: np.ndarray | None = None) -> list[TopImage]:
    """The channel's top test images that excite it at all (activation > 0), highest first."""
    entry, channel = check_channel(atlas, stage, channel)
    w = entry.grid[1]
    out = []
    for row, value, cell in zip(entry.top_rows[channel], entry.top_values[channel], entry.top_cells[channel]):
        if value <= 0:
            break  # sorted: the rest are zeros too, arbitrary test images
        row = int(row)
        out.append(TopImage(row, atlas.image(row), float(value), divmod(int(cell), w), int(atlas.labels[row]),
                            None if preds is None else int(preds[row])))
    return out


def channel_details(atlas: Atlas, stage: str, channel: int) -> dict[str, Any]:
    """Plain numbers about one channel: class means, preferred class, selectivity, test-set maximum."""
    entry, channel = check_channel(atlas, stage, channel)
    means = entry.class_means[channel].astype(np.float64)
    dead = bool(entry.dead[channel])
    si = float(selectivity(means[None])[0])
    return {
        "stage": stage,
        "channel": channel,
        "dead": dead,
        "max_activation": float(entry.top_values[channel, 0]),
        "class_means": {name: float(m) for name, m in zip(CLASSES, means)},
        "preferred_class": None if dead else CLASSES[int(means.argmax())],
        "selectivity": None if np.isnan(si) else si,
    }
