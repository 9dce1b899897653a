"""CIFAR-10 from disk into two uint8 arrays, whatever shape it arrives in.

Three layouts are accepted, all decoded once into memory as (N, 32, 32, 3)
uint8 RGB plus int64 labels, in a fixed order (classes in CIFAR-10 order,
files sorted by name within each class):

* a torchvision root holding ``cifar-10-batches-py/`` (the official python
  batches; ``download=True`` fetches them through torchvision, imported only
  then);
* an image-folder tree ``train/<class>/*.jpg|png`` and ``test/<class>/...``
  (or a folder holding exactly one such tree);
* a ``.tar.gz`` (or ``.tar``) of such a tree, read straight from the archive,
  like the offline pack ``cifar10-jpeg.tar.gz``; the official
  ``cifar-10-python.tar.gz`` works too.

Anything else raises ``DataError`` saying what was found and what was expected.
Decoding the 60,000-image JPEG pack takes ~10 s on one core, so nothing is cached.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

import numpy as np

from resnet import preprocess
from resnet.constants import CLASSES, INPUT_SIZE, JPEG_DATASET_NAME, ORIGINAL_DATASET_NAME

SPLITS = ("train", "test")
EVAL_SUBSET_SEED = 20240601  # fixed: intermediate evaluations of every run and the lesion studies see the same images
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
JPEG_SUFFIXES = (".jpg", ".jpeg")
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)

EXPECTED = (
    "a CIFAR-10 root holding cifar-10-batches-py/ (torchvision's layout; add --download to fetch it), "
    "an image-folder tree with train/<class>/ and test/<class>/ folders for the 10 classes "
    f"({', '.join(CLASSES)}), or a .tar.gz of such a tree (like cifar10-jpeg.tar.gz)"
)


SAMPLES_PER_CLASS = 3
PACK_NAME = "cifar10-jpeg.tar.gz"
# ../shared/data is the shared, read-only data folder beside the checkout.
PACK_HINT = "copy the offline pack there from the repository root with `mkdir -p data && cp ../shared/data/cifar10-jpeg.tar.gz data/`, or pass --data PATH"


class DataError(ValueError):
    """The data path is missing, incomplete or not CIFAR-10 shaped."""


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 (N, 32, 32, 3) RGB
    labels: np.ndarray  # int64 (N,), indices into CLASSES
    # The test split's image files as stored in the data set (JPEG/PNG bytes), when it came as files:
    # the channel atlas ships the ones it shows as they are. None for the python batches and the train split.
    files: tuple[bytes, ...] | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def eval_subset(n: int, size: int) -> np.ndarray:
    """The fixed ``size`` of ``n`` rows (sorted) that the per-epoch evaluations and the lesion studies
    see: one draw with EVAL_SUBSET_SEED, so equal sizes give equal images; all rows when there are fewer."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(EVAL_SUBSET_SEED).choice(n, size, replace=False))


def sample_rows(labels: np.ndarray, per_class: int = SAMPLES_PER_CLASS) -> dict[str, int]:
    """``<class>_<k>.png`` -> row: the first ``per_class`` test images of each class, in class order.

    The one choice of the shipped samples (not cherry-picked), shared by the
    export that writes them as PNGs and the training replay that probes them.
    """
    rows = {}
    for c, name in enumerate(CLASSES):
        for k, row in enumerate(np.flatnonzero(np.asarray(labels) == c)[:per_class]):
            rows[f"{name}_{k}.png"] = int(row)
    return rows


@dataclass(frozen=True)
class Cifar10:
    train: Split
    test: Split
    name: str  # JPEG_DATASET_NAME when any image was a JPEG: numbers on it carry the caveat
    source: str  # the path that was read
    layout: str  # "torchvision", "image-folder" or "archive"


def load_cifar10(path: str | Path, download: bool = False) -> Cifar10:
    p = Path(path).expanduser()
    if download:
        return _load_torchvision_root(p, download=True)
    if not p.exists():
        if p.name == PACK_NAME:
            raise DataError(f"{p} does not exist: {PACK_HINT}.")
        raise DataError(f"{p} does not exist. Expected {EXPECTED}.")
    if p.is_file():
        return _load_archive(p)
    if p.name == BATCHES_DIR or (p / BATCHES_DIR).is_dir():
        return _load_torchvision_root(p.parent if p.name == BATCHES_DIR else p, download=False)
    if any((p / s).is_dir() for s in SPLITS):
        return _load_tree(p)
    inner = [d for d in _subdirs(p) if (d / BATCHES_DIR).is_dir() or any((d / s).is_dir() for s in SPLITS)]
    if len(inner) == 1:
        return load_cifar10(inner[0])
    found = ", ".join(sorted(e.name for e in p.iterdir())[:8]) or "nothing"
    raise DataError(f"{p} holds no CIFAR-10 data (found: {found}). Expected {EXPECTED}.")


# ----- image-folder tree on disk -------------------------------------------------------


def _subdirs(p: Path) -> list[Path]:
    return sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))


def _load_tree(root: Path) -> Cifar10:
    found: dict[str, dict[str, list[Path]]] = {}
    for split in SPLITS:
        if (root / split).is_dir():
            found[split] = {
                d.name: sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
                for d in _subdirs(root / split)
            }
    _check_tree(str(root), found)
    splits = {
        split: _decode_split(((f.read_bytes, str(f)) for f in _in_order(found[split])), found[split], split == "test")
        for split in SPLITS
    }
    is_jpeg = any(f.suffix.lower() in JPEG_SUFFIXES for s in found.values() for fs in s.values() for f in fs)
    return Cifar10(splits["train"], splits["test"], _name(is_jpeg), str(root), "image-folder")


def _in_order(by_class: dict[str, list]) -> list:
    return [f for c in CLASSES for f in by_class[c]]


def _check_tree(where: str, found: dict[str, dict[str, list]]) -> None:
    """Both splits, exactly the 10 class folders, none empty; else say what is wrong."""
    for split in SPLITS:
        if split not in found:
            other = [s for s in SPLITS if s in found]
            has = f"has {other[0]}/ but " if other else ""
            raise DataError(
                f"{where} {has}has no {split}/ split. Expected {where}/{split}/<class>/ image folders "
                f"for the 10 CIFAR-10 classes ({', '.join(CLASSES)}) next to "
                f"{'/ and '.join(s for s in SPLITS if s != split)}/."
            )
        classes = set(found[split])
        if classes != set(CLASSES):
            missing = [c for c in CLASSES if c not in classes]
            unexpected = sorted(classes - set(CLASSES))
            raise DataError(
                f"{where}/{split}/ has class folders {sorted(classes)}; expected exactly the 10 CIFAR-10 "
                f"classes ({', '.join(CLASSES)})"
                + (f"; missing: {', '.join(missing)}" if missing else "")
                + (f"; unexpected: {', '.join(unexpected)}" if unexpected else "")
                + "."
            )
        for c in CLASSES:
            if not found[split][c]:
                raise DataError(f"{where}/{split}/{c}/ holds no images ({'/'.join(IMAGE_SUFFIXES)}).")


def _decode(data: bytes, where: str) -> np.ndarray:
    try:
        return preprocess.decode_cifar(data)
    except ValueError as exc:
        raise DataError(f"{where} is {exc}.") from exc


def _decode_split(items: Iterable[tuple[Callable[[], bytes], str]], by_class: dict[str, list], keep_files: bool) -> Split:
    """items: (() -> bytes, where) in class order; by_class gives the counts per class."""
    counts = [len(by_class[c]) for c in CLASSES]
    images = np.empty((sum(counts), INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    files = []
    for i, (read, where) in enumerate(items):
        data = read()
        images[i] = _decode(data, where)
        if keep_files:
            files.append(data)
    labels = np.repeat(np.arange(len(CLASSES), dtype=np.int64), counts)
    return Split(images, labels, tuple(files) if keep_files else None)


def _name(is_jpeg: bool) -> str:
    return JPEG_DATASET_NAME if is_jpeg else ORIGINAL_DATASET_NAME


# ----- archive ---------------------------------------------------------------------------


def _load_archive(path: Path) -> Cifar10:
    try:
        is_tar = tarfile.is_tarfile(path)
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc}). Expected {EXPECTED}.") from exc
    if not is_tar:
        raise DataError(f"{path} is a file but not a .tar.gz or .tar archive. Expected {EXPECTED}.")
    files: dict[str, bytes] = {}
    names: list[str] = []
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                names.append(member.name)
                parts = PurePosixPath(member.name).parts
                if not member.isfile() or any(part.startswith(".") for part in parts):
                    continue
                wanted = (len(parts) >= 3 and parts[-3] in SPLITS and parts[-1].lower().endswith(IMAGE_SUFFIXES)) or (
                    len(parts) >= 2 and parts[-2] == BATCHES_DIR
                )
                if wanted:
                    handle = tar.extractfile(member)
                    assert handle is not None
                    files[member.name] = handle.read()
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:  # truncated or corrupt gzip
        raise DataError(f"{path} is a damaged archive ({exc}). Expected {EXPECTED}.") from exc
    if not names:
        raise DataError(
            f"{path} is an empty archive. Expected a .tar.gz of an image-folder tree such as "
            "cifar10-jpeg/train/<class>/*.jpg and cifar10-jpeg/test/<class>/*.jpg."
        )
    batches = {PurePosixPath(n).name: data for n, data in files.items() if PurePosixPath(n).parent.name == BATCHES_DIR}
    if batches:
        train, test = _read_batches(lambda name: batches.get(name), f"{path}:{BATCHES_DIR}")
        return Cifar10(train, test, ORIGINAL_DATASET_NAME, str(path), "archive")
    images = {n: d for n, d in files.items() if n not in batches}
    if not images:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise DataError(
            f"{path} holds no images under train/<class>/ or test/<class>/ ({len(names)} entries: {shown}). "
            f"Expected {EXPECTED}."
        )
    roots = sorted({str(PurePosixPath(*PurePosixPath(n).parts[:-3])) for n in images})
    if len(roots) > 1:
        raise DataError(f"{path} holds more than one image-folder tree ({', '.join(roots)}); pack exactly one.")
    found: dict[str, dict[str, list[str]]] = {}
    for n in sorted(images, key=lambda n: PurePosixPath(n).parts[-1]):
        *_, split, cls, _file = PurePosixPath(n).parts
        found.setdefault(split, {}).setdefault(cls, []).append(n)
    where = f"{path}:{roots[0]}" if roots[0] != "." else str(path)
    _check_tree(where, found)
    splits = {
        split: _decode_split((((lambda n=n: images[n]), f"{path}:{n}") for n in _in_order(found[split])), found[split],
                             split == "test")
        for split in SPLITS
    }
    is_jpeg = any(n.lower().endswith(JPEG_SUFFIXES) for n in images)
    return Cifar10(splits["train"], splits["test"], _name(is_jpeg), str(path), "archive")


# ----- official python batches -----------------------------------------------------------


class _BatchUnpickler(pickle.Unpickler):
    """The CIFAR batches are pickles; allow only what a numpy array needs, never arbitrary code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def _read_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        entry = _BatchUnpickler(io.BytesIO(data), encoding="latin1").load()
        entry = {(k.decode() if isinstance(k, bytes) else k): v for k, v in entry.items()}
        flat = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry["labels"], dtype=np.int64)
    except Exception as exc:  # pickle raises many types on garbage
        raise DataError(f"{where} is not a CIFAR-10 python batch ({exc}).") from exc
    if flat.ndim != 2 or flat.shape[1] != 3 * INPUT_SIZE * INPUT_SIZE or flat.shape[0] != labels.size:
        raise DataError(f"{where} holds data of shape {flat.shape} for {labels.size} labels; expected (n, 3072).")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise DataError(f"{where} has labels outside 0..{len(CLASSES) - 1}.")
    return flat.reshape(-1, 3, INPUT_SIZE, INPUT_SIZE).transpose(0, 2, 3, 1), labels


def _read_batches(read: Callable[[str], bytes | None], where: str) -> tuple[Split, Split]:
    out = []
    for names in (TRAIN_BATCHES, TEST_BATCHES):
        missing = [n for n in names if read(n) is None]
        if missing:
            raise DataError(
                f"{where} lacks {', '.join(missing)}; a CIFAR-10 root needs {', '.join(TRAIN_BATCHES + TEST_BATCHES)} "
                "(pass --download to fetch them)."
            )
        parts = [_read_batch(read(n), f"{where}/{n}") for n in names]  # type: ignore[arg-type]
        images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
        labels = np.concatenate([p[1] for p in parts])
        # Stable sort by class: the same order as an image-folder tree (class, then file).
        order = np.argsort(labels, kind="stable")
        out.append(Split(images[order], labels[order]))
    return out[0], out[1]


def _load_torchvision_root(root: Path, download: bool) -> Cifar10:
    batches = root / BATCHES_DIR
    if download and not all((batches / n).is_file() for n in TRAIN_BATCHES + TEST_BATCHES):
        import torchvision  # only this path needs it; a bare GPU box may lack it

        try:
            torchvision.datasets.CIFAR10(root=str(root), train=True, download=True)
        except Exception as exc:  # network errors come in many types
            raise DataError(f"Downloading CIFAR-10 into {root} failed ({exc}). Without internet pass --data PACK.") from exc

    def read(name: str) -> bytes | None:
        f = batches / name
        return f.read_bytes() if f.is_file() else None

    train, test = _read_batches(read, str(batches))
    return Cifar10(train, test, ORIGINAL_DATASET_NAME, str(root), "torchvision")
