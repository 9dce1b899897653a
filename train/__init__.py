"""Training: data, the training loop, evaluation, export, the GPU job, and the Space upload.

What belongs here: reading CIFAR-10 (``data``), batched augmentation on the
device (``augment``), the recipe as a frozen dataclass and its CLI
(``config``), the loop (``trainer``: setup, loop, end of epoch, end of run),
checkpoints (``checkpoint``), float32 evaluation (``evaluate``), the export of
everything the app serves (``export``), and the GPU job script
(``gpu_run.sh``, with ``gpu_unpack.sh`` to install its results).

What it may import: ``resnet`` and, where it records or evaluates, pure code of
``insight``; torch, numpy, Pillow, safetensors and tqdm (torchvision only for
``--download`` and the benchmark). Never the explorer, gradio, plotly,
matplotlib or captum: the path through ``python -m train`` and ``python -m
train.evaluate`` must run on a bare GPU box (tests/test_train_imports.py).
``push_space`` alone imports huggingface_hub, lazily.

``python -m train --help`` lists the recipe; ``python -m train.evaluate`` and
``python -m train.export`` are the other entry points (not imported here, so
``-m`` runs them cleanly).
"""

from .config import ConfigError, TrainConfig
from .data import DataError, load_cifar10
from .trainer import TrainingDiverged, TrainResult, fit

__all__ = ["ConfigError", "DataError", "TrainConfig", "TrainResult", "TrainingDiverged", "fit", "load_cifar10"]
