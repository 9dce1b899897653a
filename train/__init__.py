"""Training, evaluation and export of ResNet-50 on CIFAR-10.

Needs only torch, numpy and pillow (torchvision only to download CIFAR-10), so
it runs on a bare GPU box. ``python -m train --help`` lists the recipe;
``python -m train.evaluate`` and ``python -m train.export`` are the other
entry points (not imported here, so ``-m`` runs them cleanly).
"""

from .config import ConfigError, TrainConfig
from .data import DataError, load_cifar10
from .trainer import TrainingDiverged, TrainResult, fit

__all__ = ["ConfigError", "DataError", "TrainConfig", "TrainResult", "TrainingDiverged", "fit", "load_cifar10"]
