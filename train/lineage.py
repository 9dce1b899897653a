"""What a warm restart continues: the runs, history and replay of the weights it starts from.

``python -m train --init-from assets/resnet50_cifar10.safetensors`` starts from shipped weights
with a fresh optimizer and its own warm-up and decay. Its history, replay and model card go on
from the ones beside those weights: epochs numbered on, replay snapshots appended at later steps,
every history row naming its run, and the card listing every run (processor, precision, threads,
seconds, images/s and the accuracy after it). The lineage is read once, when the run starts, and
kept in the run's checkpoint, so a resumed run does not depend on the folder staying as it was.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from insight.atlas import sha256_of
from insight.replay import REPLAY_FILE, ReplayError, ReplayRecorder
from insight.testset import EVALUATION_FILE
from resnet.files import AssetError, read_json
from resnet.weights import CARD_FILE, load_state_dict

from .checkpoint import HISTORY_FILE


@dataclass
class Lineage:
    """The runs before this one. Empty for a run from a random init."""

    init_from_sha256: str = ""
    runs: list[dict[str, Any]] = field(default_factory=list)  # the model card's entry of every earlier run
    history: list[dict[str, Any]] = field(default_factory=list)  # their history rows, each naming its run
    replay: dict[str, Any] | None = None  # ReplayRecorder.state_dict() of the replay so far
    steps_before: int = 0  # optimizer steps of the earlier runs (the replay's time axis goes on from here)
    images_before: int = 0
    notes: list[str] = field(default_factory=list)  # what could not be continued, and why

    @property
    def run_number(self) -> int:
        return len(self.runs) + 1

    @property
    def epochs_before(self) -> int:
        return len(self.history)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Lineage:
        return cls(**values) if values else cls()


def run_entry_from_card(card: dict[str, Any]) -> dict[str, Any]:
    """A card written before cards listed their runs describes one run: itself."""
    config = card.get("config", {})
    return {
        "run": 1,
        "processor": card.get("device"),
        "precision": card.get("training_precision")
        or ("bf16 autocast" if config.get("amp") == "bfloat16" and "cuda" in str(card.get("device", "")).lower()
            else "float32"),
        "threads": card.get("threads"),
        "epochs": card.get("epochs"),
        "training_seconds": card.get("training_seconds"),
        "images_per_second": card.get("training_images_per_second"),
        "test_accuracy": card.get("test_accuracy"),
        "test_accuracy_tta": card.get("test_accuracy_tta"),
        "init_from_sha256": None,
    }


def read_lineage(weights: Path | str, probe_names: list[str]) -> tuple[Lineage, dict[str, torch.Tensor]]:
    """The weights to start from (float32 state dict) and the lineage of the folder they sit in.

    The folder's card, history and replay are continued only when they describe exactly these
    weights (the evaluation beside them names their sha256); otherwise the run starts a new lineage
    from these weights and says why in ``notes``.
    """
    path = Path(weights)
    state = load_state_dict(path)  # a clear WeightsError for a missing, broken or LFS-pointer file
    sha = sha256_of(path)
    lineage = Lineage(init_from_sha256=sha)
    folder = path.parent
    try:
        card = read_json(folder / CARD_FILE)
        evaluation = read_json(folder / EVALUATION_FILE)
    except AssetError as exc:
        lineage.notes.append(f"no earlier runs continued: {exc}")
        return lineage, state
    if evaluation.get("weights_sha256") != sha:
        lineage.notes.append(f"no earlier runs continued: {folder / EVALUATION_FILE} describes other weights")
        return lineage, state
    lineage.runs = list(card.get("runs") or [run_entry_from_card(card)])
    try:
        rows = read_json(folder / HISTORY_FILE).get("epochs", [])
    except AssetError as exc:
        rows = []
        lineage.notes.append(f"the earlier history is not continued: {exc}")
    lineage.history = [{**row, "run": row.get("run", 1)} for row in rows]
    lineage.images_before = int(lineage.history[-1].get("images_seen", 0)) if lineage.history else 0
    if (folder / REPLAY_FILE).is_file():
        try:
            with np.load(folder / REPLAY_FILE, allow_pickle=False) as f:
                recorder = ReplayRecorder.from_arrays({k: f[k] for k in f.files})
        except (OSError, ValueError, ReplayError) as exc:
            lineage.notes.append(f"the earlier replay is not continued: it is unreadable ({exc})")
        else:
            if recorder.probe_names != list(probe_names):
                lineage.notes.append("the earlier replay is not continued: it follows other sample images")
            else:
                lineage.replay = recorder.state_dict()
                lineage.steps_before = recorder.timeline[-1][0] if recorder.timeline else 0
    return lineage, state


__all__ = ["Lineage", "read_lineage", "run_entry_from_card"]
