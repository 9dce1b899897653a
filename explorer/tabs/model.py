"""The model: its architecture table (computed from the model) and its model card."""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..context import ARCHITECTURE, CARD
from ..ui import Ctx


def architecture_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| stage | blocks | output shape (C, H, W) | parameters | what |", "|---|---:|---|---:|---|"]
    for r in rows:
        shape = " x ".join(str(s) for s in r["output_shape"])
        lines.append(f"| {r['stage']} | {r['blocks'] or ''} | {shape} | {r['parameters']:,} | {r['description']} |")
    total = sum(r["parameters"] for r in rows)
    lines.append(f"| **total** | {sum(r['blocks'] for r in rows)} | | **{total:,}** | |")
    return "\n".join(lines)


def _pct(v: Any) -> str:
    return "not measured" if v is None else f"{float(v) * 100:.2f}%"


def card_markdown(card: dict[str, Any]) -> str:
    if not card:
        return "No model card (`assets/model_card.json`) is available."
    arch = card.get("architecture", {})
    secs = card.get("training_seconds")
    items = [
        ("Architecture", f"{arch.get('name', 'ResNet-50')}, {arch.get('stem', 'cifar')} stem, blocks {arch.get('layers', '')}, "
                         f"{arch.get('parameters', 0):,} parameters"),
        ("Data set", card.get("dataset", "unknown")),
        ("Test accuracy", _pct(card.get("test_accuracy"))),
        ("Test accuracy with flip TTA", _pct(card.get("test_accuracy_tta"))),
        ("Epochs", card.get("epochs", "unknown")),
        ("Training time", "unknown" if secs is None else f"{float(secs) / 60:.1f} min"),
        ("Device", card.get("device", "unknown")),
        ("Input", f"{card.get('input_size', 32)}x{card.get('input_size', 32)} RGB, normalised with mean {card.get('mean')} / std {card.get('std')}"),
        ("Notes", card.get("notes", "")),
    ]
    return "\n".join(f"- **{k}:** {v}" for k, v in items)


def build(ctx: Ctx) -> None:
    with gr.Tab("The model", id="model"):
        gr.Markdown("### Architecture (computed from the model on a 32x32 input)")
        gr.Markdown(architecture_markdown(ARCHITECTURE), elem_id="architecture")
        gr.Markdown("### Model card")
        gr.Markdown(card_markdown(CARD), elem_id="model-card")
