"""Shared fixtures: a tiny CIFAR-10 in every layout the trainer reads (made once per session),
a synthetic evaluation.json + test_gallery.npz (``make_evaluation`` / ``write_assets``, plain
functions: ``from conftest import ...``), and ``start_app``, the running explorer for the API and
browser tests."""

from __future__ import annotations

import json
import pickle
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

from bench.app_latency import running_app
from insight.testset import EVALUATION_FILE, GALLERY_FILE
from resnet.constants import CLASSES, NUM_CLASSES

ROOT = Path(__file__).resolve().parent.parent


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


# ----- a synthetic test-set evaluation (what train.evaluate writes) ------------------------

CAT, DOG, TRUCK, AUTOMOBILE = (CLASSES.index(c) for c in ("cat", "dog", "truck", "automobile"))


def binned_reliability(conf: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> dict[str, list]:
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    safe = np.maximum(count, 1)
    return {
        "bin_lower": edges[:-1].tolist(),
        "bin_upper": edges[1:].tolist(),
        "confidence": (np.bincount(which, conf, n_bins) / safe).tolist(),
        "accuracy": (np.bincount(which, correct.astype(float), n_bins) / safe).tolist(),
        "count": count.tolist(),
    }


def make_evaluation(seed: int = 0, per_class: int = 8, temperature: bool = True) -> dict[str, Any]:
    """A small, self-consistent evaluation: 8 images per class, with cat->dog the most common mistake."""
    rng = np.random.default_rng(seed)
    label = np.repeat(np.arange(NUM_CLASSES), per_class)
    pred = label.copy()
    cats = np.flatnonzero(label == CAT)
    pred[cats[:4]] = DOG  # 4 cats called dogs
    pred[np.flatnonzero(label == DOG)[:2]] = CAT  # 2 dogs called cats
    pred[np.flatnonzero(label == TRUCK)[:1]] = AUTOMOBILE  # 1 truck called automobile
    confidence = rng.uniform(0.3, 1.0, len(label))
    true_prob = np.where(pred == label, confidence, rng.uniform(0.0, 1.0 - confidence))
    correct = pred == label
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=int)
    np.add.at(cm, (label, pred), 1)
    rel = binned_reliability(confidence, correct)
    ev = {
        "dataset": "synthetic",
        "weights": "none",
        "n": int(len(label)),
        "accuracy": float(correct.mean()),
        "accuracy_tta": None,
        "per_class_accuracy": (np.diag(cm) / cm.sum(1)).tolist(),
        "confusion_matrix": cm.tolist(),
        "ece": 0.05,
        "ece_bins": 15,
        "reliability": rel,
        "predictions": {
            "label": label.tolist(),
            "pred": pred.tolist(),
            "confidence": confidence.tolist(),
            "true_class_prob": true_prob.tolist(),
        },
    }
    if temperature:
        ev.update(temperature=1.5, temperature_fit_on="5,000 held-out training images",
                  ece_after_temperature=0.02, reliability_after_temperature=binned_reliability(confidence * 0.9, correct))
    return ev


def write_assets(folder: Path, ev: dict[str, Any] | None = None, correct_per_class: int = 3) -> dict[str, Any]:
    """evaluation.json + test_gallery.npz shipping every mistake and a few correct images per class."""
    ev = make_evaluation() if ev is None else ev
    folder.mkdir(parents=True, exist_ok=True)
    (folder / EVALUATION_FILE).write_text(json.dumps(ev))
    label = np.asarray(ev["predictions"]["label"])
    pred = np.asarray(ev["predictions"]["pred"])
    rows = list(np.flatnonzero(label != pred))
    for k in range(NUM_CLASSES):
        rows += list(np.flatnonzero((label == k) & (pred == k))[:correct_per_class])
    rows = np.array(sorted(rows), dtype=np.int32)
    # Each image encodes its own row in its first pixel, so a test can see which one came back.
    images = np.zeros((len(rows), 32, 32, 3), np.uint8)
    images[:, 0, 0, 0] = rows % 256
    images[:, 0, 0, 1] = rows // 256
    np.savez_compressed(folder / GALLERY_FILE, images=images, index=rows)
    return ev


# ----- the explorer as a running server ----------------------------------------------------


APP_PIDS: dict[str, int] = {}  # url -> process id of the servers start_app runs (to read their memory)


@contextmanager
def start_app(log_dir: Path, *args: str, **env: str) -> Iterator[str]:
    """``python app.py *args`` on a free port (extra environment in ``env``); yields its URL, stops it after."""
    app = running_app(log_dir / "app.log", *args, wait_warm=False, deadline_s=120, fail=pytest.fail, **env)
    with app as (url, proc, _, _):
        APP_PIDS[url] = proc.pid
        try:
            yield url
        finally:
            APP_PIDS.pop(url, None)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One app server on the shipped assets/, shared by every API test module."""
    with start_app(tmp_path_factory.mktemp("app_log")) as url:
        yield url


@pytest.fixture(scope="session")
def client(server: str):
    from gradio_client import Client

    return Client(server, verbose=False)


@pytest.fixture(scope="session")
def local_probs():
    """What the shipped weights say about an image file, computed in the test process (not by the server)."""
    import torch

    from resnet import preprocess
    from resnet.weights import load_pretrained

    model, _ = load_pretrained()

    def probs(path: Path) -> np.ndarray:
        x = preprocess.to_model_input(preprocess.load_image(path)).tensor
        with torch.inference_mode():
            return torch.softmax(model(x), 1)[0].numpy()

    return probs


def nonidentity_resnet50(seed: int = 0, readout_scale: float = 1.0, stem: str = "cifar", shortcuts: bool = True):
    """A random ResNet-50 in eval mode whose blocks are not identities (``shortcuts=False``: plain-50).

    Zero-init of the last BN makes every fresh block an identity, which would
    hide most of the network from a test; random BN parameters and statistics
    exercise every path. ``readout_scale`` < 1 shrinks fc so the softmax of a
    random net stays unsaturated and probabilities can move.
    """
    import torch
    from torch import nn

    from resnet import plain50, resnet50

    torch.manual_seed(seed)
    model = (resnet50 if shortcuts else plain50)(stem=stem)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
            m.running_mean = torch.randn(m.running_mean.shape, generator=g) * 0.1
            m.running_var = torch.rand(m.running_var.shape, generator=g) + 0.5
    model.fc.weight.data *= readout_scale
    return model.eval()
