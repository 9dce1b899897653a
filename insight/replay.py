"""How the model learned: snapshots of a fixed probe set taken during training, and their file.

The trainer calls ``probe_snapshot`` at the steps ``record_steps`` names (the
initialisation, a few log-spaced steps of the first epoch, where most of the
change happens) and at the end of every epoch, hands each snapshot to a
``ReplayRecorder`` together with one evaluation per epoch, keeps the recorder's
``state_dict`` in its checkpoint (so ``--resume`` continues the same replay)
and ``save``s it next to ``history.json``. The explorer reads it back with
``load_replay``.

What one snapshot holds, for every probe image: the 10 class probabilities,
Grad-CAM at layer1..layer4 (each at its own resolution: 32, 16, 8, 4 cells a
side) for the predicted and for the true class, and ||F(x)|| / ||x|| of the 16
blocks; for the whole model: the mean |gamma| of each block's last BatchNorm,
which starts at zero (zero-init residual) and shows when each block wakes up.

Grad-CAM comes from ``insight.gradcam.GradCamPass``: plain torch, batched over
the probe set (training runs on a box without captum's matplotlib), equal to
Captum's ``LayerGradCam`` (tested).

On disk the replay is an LZMA-compressed ``.npz`` without pickles:
probabilities and ratios in float16, each Grad-CAM map as uint8 on 0..127 of
its own float32 maximum. Seven bits put a cell at most 0.4% of the map's
maximum off, at most 2 of 255 colour levels in the half-transparent overlay;
the eighth bit would cost a quarter more file for nothing one can see. About
40 KB a snapshot of 30 probes when every prediction is wrong, less once the
true class's map is the predicted class's.
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from resnet.constants import CLASSES, NUM_CLASSES
from resnet.files import atomic_write_bytes
from resnet.model import STAGE_NAMES, ResNet
from resnet.preprocess import images_to_pixels, normalise

from .gradcam import GradCamPass

REPLAY_FILE = "replay.npz"
FORMAT = 1
N_BLOCKS = 16
# Each stage's Grad-CAM side in cells for 32x32 inputs with the CIFAR stem.
CAM_SIDES: dict[str, int] = {"layer1": 32, "layer2": 16, "layer3": 8, "layer4": 4}
CAM_TARGETS: tuple[str, ...] = ("pred", "true")  # explained class: the predicted one, the true one
HOW_TO_MAKE = "Training records it by default: `python -m train --export-to assets` writes it there."


def cam_key(target: str, stage: str) -> str:
    """The snapshot key of one Grad-CAM, e.g. ``cam_pred.layer3``."""
    return f"cam_{target}.{stage}"


CAM_KEYS: tuple[str, ...] = tuple(cam_key(t, s) for t in CAM_TARGETS for s in STAGE_NAMES)


class ReplayError(ValueError):
    """The replay file is missing, unreadable or inconsistent; the message says which, in a sentence."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


# ----- when to record -----------------------------------------------------------------------


def record_steps(steps_per_epoch: int, n_early: int = 8) -> list[int]:
    """The global steps inside the first epoch at which to take a snapshot, ascending.

    Step s means "after s optimizer updates": 0 is the initialisation. Then up
    to ``n_early`` steps log-spaced over the first epoch, where the network
    changes fastest. The end of every epoch (step ``k * steps_per_epoch``) is
    recorded by the trainer on top of these.
    """
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, (int, np.integer)) or steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be a positive whole number, got {steps_per_epoch!r}")
    if isinstance(n_early, bool) or not isinstance(n_early, (int, np.integer)) or n_early < 0:
        raise ValueError(f"n_early must be a whole number >= 0, got {n_early!r}")
    early = np.geomspace(1, steps_per_epoch, int(n_early) + 1)[:-1] if n_early else np.array([])
    steps = {0} | {int(round(s)) for s in early if round(s) < steps_per_epoch}
    return sorted(steps)


# ----- one snapshot -------------------------------------------------------------------------


def _module_modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    return [(m, m.training) for m in model.modules()]


def probe_snapshot(model: ResNet, images: Tensor | np.ndarray, labels: Tensor | np.ndarray | Sequence[int]) -> dict[str, np.ndarray]:
    """What the model makes of the probe images right now, in one batched forward and two backwards.

    ``images``: uint8 (N, 32, 32, 3) RGB; ``labels``: (N,) true classes. Returns
    float32 ``probs`` (N, 10), int64 ``pred`` (N,), the ReLU'd Grad-CAM of the
    predicted and of the true class at every stage (``cam_pred.layer1`` (N, 32,
    32) .. ``cam_true.layer4`` (N, 4, 4)), ``block_ratios`` (N, 16) =
    ||F(x)|| / ||x|| per block and ``bn3_gamma`` (16,) = mean |gamma| of each
    block's last BatchNorm.

    Runs in eval mode and float32 whatever autocast the caller is in; the
    model's train/eval modes and ``requires_grad`` are left as found and no
    graph outlives the call.
    """
    device = next(model.parameters()).device
    modes = _module_modes(model)
    # Everything from here on may take part in a backward pass, so no tensor may be an
    # inference tensor, even when the caller runs inside torch.inference_mode().
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
        images = images.clone() if isinstance(images, Tensor) else torch.from_numpy(np.array(images))
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"probe images must be uint8 (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
        labels = labels.detach().cpu().clone() if isinstance(labels, Tensor) else torch.tensor(np.asarray(labels))
        labels = labels.long()
        if labels.shape != (images.shape[0],):
            raise ValueError(f"need one label per probe image: {tuple(labels.shape)} labels for {images.shape[0]} images")
        if labels.numel() and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
            raise ValueError(f"probe labels must be class indices 0..{NUM_CLASSES - 1}")
        model.eval()
        try:
            return _snapshot(model, normalise(images_to_pixels(images.to(device))), labels.to(device))
        finally:
            for module, training in modes:
                module.training = training


def _snapshot(model: ResNet, x: Tensor, labels: Tensor) -> dict[str, np.ndarray]:
    run = GradCamPass(model, x, block_ratios=True)  # one forward for the batch; each class is one backward
    try:
        pred = run.predicted
        cams = {cam_key(target, stage): cam.cpu().numpy()
                for target, classes in (("pred", pred), ("true", labels))
                for stage, cam in run.cams(classes).items()}
    finally:
        run.close()
    gamma = torch.stack([b.bn3.weight.detach().abs().float().mean() for b in model.blocks().values()])
    return {
        "probs": torch.softmax(run.logits, 1).cpu().numpy().astype(np.float32),
        "pred": pred.cpu().numpy().astype(np.int64),
        **cams,
        "block_ratios": run.block_ratios.cpu().numpy().astype(np.float32),
        "bn3_gamma": gamma.cpu().numpy().astype(np.float32),
    }


# ----- quantisation: what goes to disk ------------------------------------------------------

CAM_LEVELS = 127  # uint8 per map, 0..127 of the map's own maximum (see the module docstring)


def quantise_cams(cams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., h, w) float maps >= 0 -> uint8 maps on 0..CAM_LEVELS of each map's maximum, and those maxima."""
    cams = np.asarray(cams, dtype=np.float32)
    top = cams.reshape(*cams.shape[:-2], -1).max(-1) if cams.size else np.zeros(cams.shape[:-2], np.float32)
    safe = np.where(top > 0, top, 1.0)[..., None, None]
    q = np.rint(np.clip(cams / safe, 0.0, 1.0) * CAM_LEVELS).astype(np.uint8)
    return q, top.astype(np.float32)


def dequantise_cams(q: np.ndarray, top: np.ndarray | float) -> np.ndarray:
    return q.astype(np.float32) * (np.asarray(top, dtype=np.float32)[..., None, None] / CAM_LEVELS)


# ----- the recording ------------------------------------------------------------------------

# Per-snapshot arrays as stored (on disk and in a checkpoint), without the snapshot axis.
def _snapshot_layout(n: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    layout: dict[str, tuple[tuple[int, ...], np.dtype]] = {
        "probs": ((n, NUM_CLASSES), np.dtype(np.float16)),
        "pred": ((n,), np.dtype(np.uint8)),
        "block_ratios": ((n, N_BLOCKS), np.dtype(np.float16)),
        "bn3_gamma": ((N_BLOCKS,), np.dtype(np.float32)),
        "cam_scale": ((n, len(CAM_TARGETS), len(STAGE_NAMES)), np.dtype(np.float32)),
    }
    for key in CAM_KEYS:
        side = CAM_SIDES[key.split(".")[1]]
        layout[key] = ((n, side, side), np.dtype(np.uint8))
    return layout


TIMELINE = {"step": np.dtype(np.int64), "epoch": np.dtype(np.float64), "images_seen": np.dtype(np.int64)}


def _check_probes(names: Sequence[str], labels: Sequence[int]) -> tuple[list[str], list[int]]:
    names = [str(n) for n in names]
    labels_arr = np.asarray(labels)
    if labels_arr.shape != (len(names),):
        raise ValueError(f"need one label per probe: {len(names)} names and {labels_arr.size} labels")
    if not names:
        raise ValueError("the probe set is empty")
    if len(set(names)) != len(names):
        raise ValueError("probe names must be unique")
    if labels_arr.size and (not np.issubdtype(labels_arr.dtype, np.integer) or labels_arr.min() < 0
                            or labels_arr.max() >= NUM_CLASSES):
        raise ValueError(f"probe labels must be class indices 0..{NUM_CLASSES - 1}")
    return names, [int(v) for v in labels_arr]


class ReplayRecorder:
    """Collects snapshots and per-epoch evaluations during training; stores them compactly.

    Snapshots are quantised as they arrive, so the recorder that comes back
    from a checkpoint (``state_dict`` / ``from_state_dict``) holds exactly what
    an uninterrupted run would hold. Recording a step (or an epoch's
    evaluation) again replaces it: a resumed run may take it twice.
    """

    def __init__(self, probe_names: Sequence[str], probe_labels: Sequence[int]) -> None:
        self.probe_names, self.probe_labels = _check_probes(probe_names, probe_labels)
        self._layout = _snapshot_layout(len(self.probe_names))
        self.timeline: list[tuple[int, float, int]] = []  # (step, epoch, images_seen) per snapshot
        self._snapshots: list[dict[str, np.ndarray]] = []
        self.evals: list[tuple[int, np.ndarray]] = []  # (epoch, 10x10 confusion counts)

    def __len__(self) -> int:
        return len(self._snapshots)

    def add_snapshot(self, snap: Mapping[str, np.ndarray], *, step: int, epoch: float, images_seen: int) -> None:
        """Keep one ``probe_snapshot`` taken after ``step`` updates (``epoch`` epochs, ``images_seen`` images)."""
        n = len(self.probe_names)
        missing = [k for k in ("probs", "pred", "block_ratios", "bn3_gamma", *CAM_KEYS) if k not in snap]
        if missing:
            raise ValueError(f"the snapshot lacks {', '.join(missing)}; take it with probe_snapshot()")
        arrays = {k: np.asarray(snap[k]) for k in ("probs", "pred", "block_ratios", "bn3_gamma", *CAM_KEYS)}
        for key, array in arrays.items():
            shape = self._layout[key][0] if key != "pred" else (n,)
            if array.shape != shape:
                raise ValueError(f"snapshot {key!r} has shape {array.shape}; {n} probes need {shape}")
            if key != "pred" and not np.isfinite(array).all():
                raise ValueError(f"snapshot {key!r} holds NaN or infinity at step {step}")
        step, images_seen, epoch = int(step), int(images_seen), float(epoch)
        if step < 0 or images_seen < 0 or not math.isfinite(epoch) or epoch < 0:
            raise ValueError(f"step, epoch and images_seen must be >= 0, got {step}, {epoch}, {images_seen}")
        pred = arrays["pred"].astype(np.int64)
        if pred.size and (pred.min() < 0 or pred.max() >= NUM_CLASSES):
            raise ValueError(f"snapshot 'pred' must hold class indices 0..{NUM_CLASSES - 1}")
        stored: dict[str, np.ndarray] = {
            "probs": arrays["probs"].astype(np.float16),
            "pred": pred.astype(np.uint8),
            "block_ratios": arrays["block_ratios"].astype(np.float16),
            "bn3_gamma": arrays["bn3_gamma"].astype(np.float32),
        }
        same = pred == np.asarray(self.probe_labels)
        scale = np.zeros(self._layout["cam_scale"][0], np.float32)
        for t, target in enumerate(CAM_TARGETS):
            for s, stage in enumerate(STAGE_NAMES):
                cams = arrays[cam_key(target, stage)].astype(np.float32)
                if target == "true":
                    # Where the prediction is right the true-class map is the predicted-class map:
                    # store it once (zeros compress to nothing) and read it from cam_pred.
                    cams = np.where(same[:, None, None], 0.0, cams)
                stored[cam_key(target, stage)], scale[:, t, s] = quantise_cams(cams)
        stored["cam_scale"] = scale
        self._insert((step, epoch, images_seen), stored)

    def _insert(self, when: tuple[int, float, int], stored: dict[str, np.ndarray]) -> None:
        steps = [t[0] for t in self.timeline]
        if steps and when[0] < steps[-1]:
            if when[0] not in steps:
                raise ValueError(f"snapshots must come in training order: step {when[0]} after step {steps[-1]}")
            at = steps.index(when[0])
            self.timeline[at], self._snapshots[at] = when, stored
            return
        if steps and when[0] == steps[-1]:
            self.timeline[-1], self._snapshots[-1] = when, stored
            return
        self.timeline.append(when)
        self._snapshots.append(stored)

    def add_epoch_eval(self, epoch: int, labels: np.ndarray | Tensor, preds: np.ndarray | Tensor) -> None:
        """The evaluation after ``epoch`` (1-based): true labels and predictions of the evaluation images."""
        y = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels).reshape(-1)
        p = np.asarray(preds.cpu() if isinstance(preds, Tensor) else preds).reshape(-1)
        if y.shape != p.shape or y.size == 0:
            raise ValueError(f"need one prediction per evaluation label: {y.size} labels, {p.size} predictions")
        for name, a in (("labels", y), ("predictions", p)):
            if not np.issubdtype(a.dtype, np.integer) or a.min() < 0 or a.max() >= NUM_CLASSES:
                raise ValueError(f"evaluation {name} must be class indices 0..{NUM_CLASSES - 1}")
        epoch = int(epoch)
        if epoch < 1:
            raise ValueError(f"an evaluation follows an epoch (1, 2, ...), got epoch {epoch}")
        confusion = np.bincount(y.astype(np.int64) * NUM_CLASSES + p.astype(np.int64),
                                minlength=NUM_CLASSES**2).reshape(NUM_CLASSES, NUM_CLASSES)
        epochs = [e for e, _ in self.evals]
        if epoch in epochs:
            self.evals[epochs.index(epoch)] = (epoch, confusion)
        elif epochs and epoch < epochs[-1]:
            raise ValueError(f"evaluations must come in training order: epoch {epoch} after epoch {epochs[-1]}")
        else:
            self.evals.append((epoch, confusion))

    # ----- stacked arrays: the one form for checkpoints and files ----------------------------

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything recorded as named arrays with a leading snapshot (or evaluation) axis."""
        out: dict[str, np.ndarray] = {
            "format": np.array(FORMAT, dtype=np.int64),
            "probe_names": np.array(self.probe_names, dtype=str),
            "probe_labels": np.array(self.probe_labels, dtype=np.uint8),
        }
        for i, (key, dtype) in enumerate(TIMELINE.items()):
            out[key] = np.array([t[i] for t in self.timeline], dtype=dtype)
        for key, (shape, dtype) in self._layout.items():
            out[key] = (np.stack([s[key] for s in self._snapshots]) if self._snapshots
                        else np.zeros((0, *shape), dtype))
        out["eval_epoch"] = np.array([e for e, _ in self.evals], dtype=np.int64)
        out["confusion"] = (np.stack([c for _, c in self.evals]).astype(np.int64) if self.evals
                            else np.zeros((0, NUM_CLASSES, NUM_CLASSES), np.int64))
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> "ReplayRecorder":
        checked = validate_arrays(arrays)
        rec = cls(list(checked["probe_names"]), checked["probe_labels"].astype(np.int64))
        rec.timeline = [(int(s), float(e), int(i)) for s, e, i in
                        zip(checked["step"], checked["epoch"], checked["images_seen"])]
        rec._snapshots = [{k: checked[k][j] for k in rec._layout} for j in range(len(rec.timeline))]
        rec.evals = [(int(e), checked["confusion"][j]) for j, e in enumerate(checked["eval_epoch"])]
        return rec

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, lists and numbers: readable by ``torch.load(weights_only=True)``."""
        state: dict[str, Any] = {}
        for key, value in self.arrays().items():
            if key == "probe_names":
                state[key] = list(self.probe_names)
            elif key == "format":
                state[key] = FORMAT
            else:
                state[key] = torch.from_numpy(np.ascontiguousarray(value))
        return state

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> "ReplayRecorder":
        try:
            arrays = {k: (np.array(v, dtype=str) if k == "probe_names" else
                          v.numpy() if isinstance(v, Tensor) else np.asarray(v)) for k, v in state.items()}
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ReplayError(f"The replay state in the checkpoint is not readable ({exc}).") from exc
        return cls.from_arrays(arrays)

    def to_bytes(self) -> bytes:
        return _npz_bytes(self.arrays())

    def save(self, path: Path | str) -> None:
        """Write the replay atomically: a reader sees the old file or the new one, never half of one."""
        atomic_write_bytes(path, self.to_bytes())


def _compression() -> int:
    try:
        import lzma  # noqa: F401  (CPython can be built without it)
    except ImportError:
        return zipfile.ZIP_DEFLATED
    # LZMA packs the uint8 Grad-CAM maps about 30% smaller than deflate; numpy's
    # np.load reads any method zipfile knows.
    return zipfile.ZIP_LZMA


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An .npz archive (np.load reads it) with fixed timestamps: the same replay gives the same bytes."""
    buffer = io.BytesIO()
    method = _compression()
    with zipfile.ZipFile(buffer, "w") as archive:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            with archive.open(info, "w") as f:
                np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)
    return buffer.getvalue()


# ----- reading it back ----------------------------------------------------------------------


def _fail(problem: str, where: str = REPLAY_FILE) -> ReplayError:
    return ReplayError(f"`{where}` {problem}. {HOW_TO_MAKE}")


def validate_arrays(arrays: Mapping[str, np.ndarray], where: str = REPLAY_FILE) -> dict[str, np.ndarray]:
    """Check the stored arrays against each other; ``ReplayError`` with a sentence when they disagree."""
    a = dict(arrays)
    fmt = a.get("format")
    if fmt is None or np.asarray(fmt).shape != () or int(np.asarray(fmt)) != FORMAT:
        raise _fail(f"is not a replay of format {FORMAT}", where)
    for key in ("probe_names", "probe_labels"):
        if key not in a:
            raise _fail(f"lacks {key}", where)
    names, labels = np.asarray(a["probe_names"]), np.asarray(a["probe_labels"])
    if names.ndim != 1 or not names.dtype.kind == "U":
        raise _fail("has no list of probe names", where)
    try:
        _check_probes(list(names), labels)
    except ValueError as exc:
        raise _fail(f"has an unusable probe set ({exc})", where) from None
    layout = _snapshot_layout(len(names))
    expected = {**{k: ((), d) for k, d in TIMELINE.items()}, **layout}
    missing = [k for k in (*expected, "eval_epoch", "confusion") if k not in a]
    if missing:
        raise _fail(f"lacks {', '.join(missing)}", where)
    n_snap = np.asarray(a["step"]).shape[0] if np.asarray(a["step"]).ndim == 1 else -1
    if n_snap < 0:
        raise _fail("has no list of snapshot steps", where)
    out: dict[str, np.ndarray] = {"format": np.asarray(fmt), "probe_names": names, "probe_labels": labels.astype(np.uint8)}
    for key, (shape, dtype) in expected.items():
        value = np.asarray(a[key])
        if value.shape != (n_snap, *shape) or value.dtype.kind != dtype.kind:
            raise _fail(f"has {key} of shape {value.shape} ({value.dtype}); {n_snap} snapshots of "
                        f"{len(names)} probes need {(n_snap, *shape)} ({dtype})", where)
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise _fail(f"has NaN or infinite {key}", where)
        out[key] = value.astype(dtype, copy=False)
    if (np.diff(out["step"]) <= 0).any() or (out["step"] < 0).any():
        raise _fail("has snapshot steps that are not increasing", where)
    if (np.diff(out["images_seen"]) < 0).any() or (np.diff(out["epoch"]) < 0).any():
        raise _fail("has epochs or image counts that go backwards", where)
    if (out["pred"] >= NUM_CLASSES).any():
        raise _fail(f"has predictions outside 0..{NUM_CLASSES - 1}", where)
    probs = out["probs"].astype(np.float32)
    if (probs < 0).any() or (np.abs(probs.sum(-1) - 1) > 0.02).any():
        raise _fail("has class probabilities that do not sum to 1", where)
    if (out["cam_scale"] < 0).any() or (out["bn3_gamma"] < 0).any() or (out["block_ratios"] < 0).any():
        raise _fail("has negative Grad-CAM scales, |gamma| or ratios", where)
    epochs, confusion = np.asarray(a["eval_epoch"]), np.asarray(a["confusion"])
    if epochs.ndim != 1 or epochs.dtype.kind not in "iu" or confusion.shape != (len(epochs), NUM_CLASSES, NUM_CLASSES) \
            or confusion.dtype.kind not in "iu":
        raise _fail(f"has {epochs.shape} evaluation epochs but confusion matrices of shape {confusion.shape}", where)
    if (np.diff(epochs) <= 0).any() or (epochs < 1).any() or (confusion < 0).any():
        raise _fail("has evaluations out of order or negative counts", where)
    if (confusion.sum((1, 2)) == 0).any():
        raise _fail("has an evaluation of zero images", where)
    out["eval_epoch"], out["confusion"] = epochs.astype(np.int64), confusion.astype(np.int64)
    return out


BLOCK_NAMES: tuple[str, ...] = tuple(f"{stage}.{i}" for stage, n in zip(STAGE_NAMES, (3, 4, 6, 3)) for i in range(n))


@dataclass(frozen=True)
class Replay:
    """A validated replay: S snapshots of N probes, E evaluations. Cams are read per snapshot and probe."""

    probe_names: tuple[str, ...]
    probe_labels: np.ndarray  # (N,) int64
    step: np.ndarray  # (S,) int64: optimizer updates before the snapshot
    epoch: np.ndarray  # (S,) float64: epochs of training before it
    images_seen: np.ndarray  # (S,) int64
    probs: np.ndarray  # (S, N, 10) float32
    pred: np.ndarray  # (S, N) int64
    block_ratios: np.ndarray  # (S, N, 16) float32
    bn3_gamma: np.ndarray  # (S, 16) float32
    eval_epoch: np.ndarray  # (E,) int64
    confusion: np.ndarray  # (E, 10, 10) int64, rows true, columns predicted
    quantised_cams: Mapping[str, np.ndarray]  # CAM_KEYS -> (S, N, h, w) uint8
    cam_scale: np.ndarray  # (S, N, 2, 4) float32: the maximum of each map

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], where: str = REPLAY_FILE) -> "Replay":
        a = validate_arrays(arrays, where)
        if len(a["step"]) == 0:
            raise _fail("holds no snapshot", where)
        return cls(
            probe_names=tuple(str(n) for n in a["probe_names"]),
            probe_labels=a["probe_labels"].astype(np.int64),
            step=a["step"], epoch=a["epoch"], images_seen=a["images_seen"],
            probs=a["probs"].astype(np.float32), pred=a["pred"].astype(np.int64),
            block_ratios=a["block_ratios"].astype(np.float32), bn3_gamma=a["bn3_gamma"],
            eval_epoch=a["eval_epoch"], confusion=a["confusion"],
            quantised_cams={k: a[k] for k in CAM_KEYS}, cam_scale=a["cam_scale"],
        )

    def __len__(self) -> int:
        return len(self.step)

    def probe(self, name: str | int) -> int:
        """The index of a probe given by file name (``cat_0.png``) or index; ValueError with the choices."""
        if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
            if 0 <= int(name) < len(self.probe_names):
                return int(name)
        elif name in self.probe_names:
            return self.probe_names.index(name)
        examples = ", ".join(self.probe_names[:3])
        raise ValueError(f"{name!r} is not one of the {len(self.probe_names)} probe images recorded "
                         f"during training; use a file name such as {examples}.")

    def snapshot(self, index: int | float) -> int:
        """A snapshot index checked against 0..S-1 (a whole number; ValueError otherwise)."""
        try:
            value = float(index)
        except (TypeError, ValueError):
            value = math.nan
        if not value.is_integer() or not 0 <= value < len(self):
            raise ValueError(f"The snapshot index must be a whole number from 0 to {len(self) - 1}; got {index!r}.")
        return int(value)

    def label(self, snapshot: int) -> str:
        """What the slider says for one snapshot: when it was taken and how many images the model had seen."""
        step, epoch, seen = int(self.step[snapshot]), float(self.epoch[snapshot]), int(self.images_seen[snapshot])
        if step == 0:
            return "initialisation (step 0, no image seen yet)"
        when = f"end of epoch {round(epoch)}" if epoch >= 1 and abs(epoch - round(epoch)) < 1e-6 else f"epoch {epoch:.2f}"
        return f"{when} (step {step:,}, {seen:,} images seen)"

    def cams(self, snapshot: int, probe: int) -> dict[str, dict[str, np.ndarray]]:
        """{"pred" | "true": {stage: (h, w) float32}} at one snapshot for one probe."""
        out: dict[str, dict[str, np.ndarray]] = {}
        right = self.pred[snapshot, probe] == self.probe_labels[probe]
        for t, target in enumerate(CAM_TARGETS):
            source_t = 0 if (target == "true" and right) else t
            source = CAM_TARGETS[source_t]
            out[target] = {
                stage: dequantise_cams(self.quantised_cams[cam_key(source, stage)][snapshot, probe],
                                       self.cam_scale[snapshot, probe, source_t, s])
                for s, stage in enumerate(STAGE_NAMES)
            }
        return out

    def evaluation_at(self, snapshot: int) -> int | None:
        """The latest evaluation taken at or before a snapshot (index into ``eval_epoch``), if any."""
        done = np.flatnonzero(self.eval_epoch <= self.epoch[snapshot] + 1e-6)
        return int(done[-1]) if done.size else None

    def per_class_accuracy(self) -> np.ndarray:
        """(E, 10): the fraction of each class's evaluation images classified correctly, per evaluation."""
        totals = self.confusion.sum(2)
        return np.diagonal(self.confusion, axis1=1, axis2=2) / np.maximum(totals, 1)

    def view(self, probe: str | int, snapshot: int | float) -> dict[str, Any]:
        """Everything the "How it learned" tab shows for one probe at one snapshot, as JSON-able data."""
        p, s = self.probe(probe), self.snapshot(snapshot)
        label = int(self.probe_labels[p])
        cams = self.cams(s, p)
        ev = self.evaluation_at(s)
        acc = self.per_class_accuracy()
        evaluation = None
        if ev is not None:
            cm = self.confusion[ev]
            evaluation = {
                "epoch": int(self.eval_epoch[ev]),
                "images": int(cm.sum()),
                "accuracy": float(np.trace(cm) / cm.sum()),
                "per_class_accuracy": {c: float(v) for c, v in zip(CLASSES, acc[ev])},
                "confusion_matrix": cm.tolist(),
            }
        return {
            "sample": self.probe_names[p],
            "true_class": CLASSES[label],
            "snapshot": {
                "index": s, "count": len(self), "step": int(self.step[s]), "epoch": float(self.epoch[s]),
                "images_seen": int(self.images_seen[s]), "label": self.label(s),
            },
            "predicted_class": CLASSES[int(self.pred[s, p])],
            "probs": {c: float(v) for c, v in zip(CLASSES, self.probs[s, p])},
            "cams": {target: {stage: m.tolist() for stage, m in cams[target].items()} for target in CAM_TARGETS},
            "block_ratios": {b: float(v) for b, v in zip(BLOCK_NAMES, self.block_ratios[s, p])},
            "bn3_gamma": {b: float(v) for b, v in zip(BLOCK_NAMES, self.bn3_gamma[s])},
            "evaluation": evaluation,
            "over_training": {
                "step": self.step.tolist(), "epoch": self.epoch.tolist(), "images_seen": self.images_seen.tolist(),
                "labels": [self.label(i) for i in range(len(self))],
                "probs": {c: self.probs[:, p, k].tolist() for k, c in enumerate(CLASSES)},
                "predicted_class": [CLASSES[int(k)] for k in self.pred[:, p]],
                "block_ratios": {b: self.block_ratios[:, p, k].tolist() for k, b in enumerate(BLOCK_NAMES)},
                "bn3_gamma": {b: self.bn3_gamma[:, k].tolist() for k, b in enumerate(BLOCK_NAMES)},
            },
            "over_epochs": {
                "epoch": self.eval_epoch.tolist(),
                "accuracy": (np.trace(self.confusion, axis1=1, axis2=2) / np.maximum(self.confusion.sum((1, 2)), 1)).tolist(),
                "per_class_accuracy": {c: acc[:, k].tolist() for k, c in enumerate(CLASSES)},
            },
        }


def load_replay(path: Path | str) -> Replay:
    """Read and validate a replay file; ``ReplayError`` (a ValueError, ``missing`` set when there is no file)."""
    path = Path(path)
    if not path.is_file():
        raise ReplayError(f"`{path.name}` is not available in this build ({path}). {HOW_TO_MAKE}", missing=True)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as exc:  # zipfile, lzma, numpy's header parser and pickle guard all raise their own types
        raise ReplayError(f"`{path.name}` is not a readable replay ({type(exc).__name__}: {exc}). {HOW_TO_MAKE}") from exc
    return Replay.from_arrays(arrays, path.name)


# ----- the probe set ------------------------------------------------------------------------


def probe_samples(folder: Path | str) -> tuple[list[str], np.ndarray, list[int]]:
    """The shipped samples ``<class>_<k>.png`` in class order: (file names, uint8 (N, 32, 32, 3), labels).

    The same 30 images, in the same order, that the explorer offers as examples.
    """
    from PIL import Image

    folder = Path(folder)
    found = [p for p in folder.glob("*.png") if p.stem.rsplit("_", 1)[0] in CLASSES]
    paths = sorted(found, key=lambda p: (p.stem.rsplit("_", 1)[0], p.name))
    if not paths:
        raise ValueError(f"No probe images (<class>_<k>.png) in {folder}.")
    images = []
    for p in paths:
        with Image.open(p) as im:
            images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"The probe images in {folder} differ in size ({sorted(shapes)}); they must all be 32x32.")
    return [p.name for p in paths], np.stack(images), [CLASSES.index(p.stem.rsplit("_", 1)[0]) for p in paths]
