"""The network and what defines it: ResNet-50 written from scratch for CIFAR-10.

The model (``model``), the data contract it was trained on (``constants``),
any image -> the tensor it takes (``preprocess``), the weights and model card on
disk (``weights``) and the atomic file I/O they share with training
(``files``). Depends on torch and safetensors only; what explains the model
lives in ``insight``, the app in ``explorer``, training in ``train``.
"""

from .constants import CLASSES, INPUT_SIZE, MEAN, NUM_CLASSES, STD
from .model import (FEATURE_NAMES, STAGE_NAMES, BlockAnatomy, Bottleneck, FeatureInfo, Intermediates, ResNet, plain50,
                    resnet50)
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
    "plain50",
    "resnet50",
    "save_weights",
]
