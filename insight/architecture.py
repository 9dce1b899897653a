"""The model described by itself: one row per part, from running it and counting its parameters."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from resnet.constants import INPUT_SIZE
from resnet.model import STAGE_NAMES, ResNet


def architecture_table(model: ResNet, input_size: int = INPUT_SIZE) -> list[dict[str, Any]]:
    """One row per part of the network: stage, blocks, output shape, parameters.

    Shapes come from running a blank image through the model, parameters from
    counting them, so the table cannot drift from the code.
    """
    with torch.inference_mode():
        inter = model.forward_intermediates(torch.zeros(1, 3, input_size, input_size))
    info = {f.name: f for f in model.feature_info}

    def params(*modules: nn.Module) -> int:
        return sum(p.numel() for m in modules for p in m.parameters())

    rows = [
        {
            "stage": "stem",
            "blocks": 0,
            "output_shape": tuple(inter.features["stem"].shape[1:]),
            "parameters": params(model.conv1, model.bn1),
            "description": info["stem"].description,
        }
    ]
    for name in STAGE_NAMES:
        rows.append(
            {
                "stage": name,
                "blocks": len(getattr(model, name)),
                "output_shape": tuple(inter.features[name].shape[1:]),
                "parameters": params(getattr(model, name)),
                "description": info[name].description,
            }
        )
    rows.append(
        {
            "stage": "head",
            "blocks": 0,
            "output_shape": tuple(inter.logits.shape[1:]),
            "parameters": params(model.fc),
            "description": "global average pool -> fully connected",
        }
    )
    return rows
