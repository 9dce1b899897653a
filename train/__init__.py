"""Training: data, the training loop, evaluation, export, the GPU job, and the Space upload.

What belongs here: reading CIFAR-10 (``data``), batched augmentation on the
device (``augment``), the recipe as a frozen dataclass and its CLI
(``config``), the loop (``trainer``: setup, loop, end of epoch, end of run),
checkpoints (``checkpoint``), float32 evaluation (``evaluate``), the export of
everything the app serves (``export``), the lesion study (``lesions``), the
plain twin's training beside ResNet-50's (``twin``), and the GPU job script
(``gpu_run.sh``, with ``gpu_unpack.sh`` to install its results).

What it may import: ``resnet`` and, where it records or evaluates, pure code of
``insight``; torch, numpy, Pillow, safetensors and tqdm (torchvision only for
``--download`` and the benchmark). Never the explorer, gradio, plotly,
matplotlib or captum: the path through ``python -m train`` and ``python -m
train.evaluate`` must run on a bare GPU box (tests/test_train_imports.py).
``push_space`` alone imports huggingface_hub, lazily.

``python -m train --help`` lists the recipe; ``python -m train.evaluate``,
``python -m train.atlas``, ``python -m train.lesions``, ``python -m train.twin``
and ``python -m train.export`` are the other entry
points (nothing is imported with the package, so ``-m`` runs them cleanly).
"""

from __future__ import annotations

import importlib
from typing import Any

# Resolved on first use (PEP 562): importing the package loads none of its modules, so
# `python -m train.export` (which the trainer imports) runs without runpy's double-import warning.
_WHERE = {"ConfigError": "config", "TrainConfig": "config", "DataError": "data", "load_cifar10": "data",
          "TrainingDiverged": "trainer", "TrainResult": "trainer", "fit": "trainer"}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'train' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
