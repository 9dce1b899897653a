"""ResNet-50 from scratch for CIFAR-10, and the helpers that explain it."""

from .constants import CLASSES, INPUT_SIZE, MEAN, NUM_CLASSES, STD
from .model import (
    FEATURE_NAMES,
    STAGE_NAMES,
    BlockAnatomy,
    Bottleneck,
    FeatureInfo,
    Intermediates,
    ResNet,
    resnet50,
)
from .weights import ASSETS_DIR, WeightsError, load_pretrained, save_weights

__all__ = [
    "ASSETS_DIR",
    "CLASSES",
    "FEATURE_NAMES",
    "INPUT_SIZE",
    "MEAN",
    "NUM_CLASSES",
    "STAGE_NAMES",
    "STD",
    "BlockAnatomy",
    "Bottleneck",
    "FeatureInfo",
    "Intermediates",
    "ResNet",
    "WeightsError",
    "load_pretrained",
    "resnet50",
    "save_weights",
]
