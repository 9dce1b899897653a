"""The facts about the data that the model, the trainer and the app must agree on.

Everything that crosses the train -> assets -> app boundary lives here and is
written into the model card, so a card can always be checked against the code.
"""

from __future__ import annotations

# CIFAR-10's own label order (index i is label i in the original batches).
CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
NUM_CLASSES: int = len(CLASSES)

# Per-channel statistics of the CIFAR-10 training images, RGB, on a 0..1 scale.
MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

# Side of the square image the network is trained on, in pixels.
INPUT_SIZE: int = 32

# The shared offline pack is a lossy re-encoding; every number measured on it
# must carry this name so nobody mistakes it for the PNG-exact test batch.
JPEG_DATASET_NAME: str = "CIFAR-10 (JPEG q75 copy)"
ORIGINAL_DATASET_NAME: str = "CIFAR-10"
