"""Shared fixtures: a tiny CIFAR-10 in every layout the trainer reads (made once per session)."""

from __future__ import annotations

import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet.constants import CLASSES


@dataclass(frozen=True)
class TinyCifar:
    tree: Path  # cifar10-jpeg/ with train/<class>/NNNN.jpg and test/<class>/NNNN.jpg (JPEG q75, 32x32)
    archive: Path  # cifar10-jpeg.tar.gz of that tree, top folder cifar10-jpeg/ like the real pack
    torchvision_root: Path  # holds cifar-10-batches-py/ with the official pickle layout (PNG-exact pixels)
    train_per_class: int
    test_per_class: int
    # The pixels and labels written into the torchvision pickles, in class order (what the loader must return).
    batches_train: tuple[np.ndarray, np.ndarray] = field(repr=False)
    batches_test: tuple[np.ndarray, np.ndarray] = field(repr=False)


def tiny_images(rng: np.random.Generator, label: int, n: int) -> np.ndarray:
    """Noisy images whose colour and stripe orientation depend on the class: learnable, not trivial."""
    base = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53 + 80) % 256], dtype=np.float64)
    yy, xx = np.mgrid[0:32, 0:32]
    stripes = np.sin((xx if label % 2 else yy) * (0.3 + 0.1 * label))[..., None] * 40
    noise = rng.normal(0, 25, size=(n, 32, 32, 3))
    return np.clip(base + stripes + noise, 0, 255).astype(np.uint8)


def _write_tree(root: Path, rng: np.random.Generator, train_per_class: int, test_per_class: int) -> None:
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i, image in enumerate(tiny_images(rng, label, n)):
                Image.fromarray(image).save(folder / f"{i:04d}.jpg", quality=75)


def _write_batches(root: Path, rng: np.random.Generator, train_per_class: int, test_per_class: int):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    made = []
    for names, per_class in ((tuple(f"data_batch_{i}" for i in range(1, 6)), train_per_class), (("test_batch",), test_per_class)):
        labels = np.repeat(np.arange(len(CLASSES)), per_class)
        images = np.concatenate([tiny_images(rng, c, per_class) for c in range(len(CLASSES))])
        order = rng.permutation(labels.size)  # the official batches are shuffled
        chunks = np.array_split(order, len(names))
        for name, chunk in zip(names, chunks):
            entry = {
                b"batch_label": name.encode(),
                b"labels": labels[chunk].tolist(),
                b"data": images[chunk].transpose(0, 3, 1, 2).reshape(len(chunk), -1),
                b"filenames": [f"{i}.png".encode() for i in chunk],
            }
            (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        # What the loader must return: stable-sorted by class in the file order of the batches.
        file_order = np.concatenate(chunks)
        keep = file_order[np.argsort(labels[file_order], kind="stable")]
        made.append((images[keep], labels[keep]))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CLASSES]}, protocol=2))
    return made


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory: pytest.TempPathFactory) -> TinyCifar:
    base = tmp_path_factory.mktemp("tiny_cifar")
    rng = np.random.default_rng(0)
    train_per_class, test_per_class = 4, 3
    tree = base / "folder" / "cifar10-jpeg"
    _write_tree(tree, rng, train_per_class, test_per_class)
    archive = base / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="cifar10-jpeg")
    torchvision_root = base / "torchvision"
    batches_train, batches_test = _write_batches(torchvision_root, rng, train_per_class, test_per_class)
    return TinyCifar(tree, archive, torchvision_root, train_per_class, test_per_class, batches_train, batches_test)


@pytest.fixture(scope="module")
def single_torch_thread():
    """One intra-op thread for a module's tiny training runs, restored afterwards.

    On a shared 2-core machine two threads per process spin-wait on each other
    whenever a neighbour holds a core, which made tiny runs 10x slower; one
    thread is as fast at these sizes and keeps every compared run on the same
    thread count (subprocesses get OMP_NUM_THREADS=1 to match).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
