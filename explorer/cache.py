"""What the explorer computed for recent images, keyed by their content.

Every event of the page names the current image by its file; the file's
sha256 finds what was already computed for it: the 32x32 input, the
prediction, the activations and the Grad-CAM maps of every
class asked for so far. So moving the opacity slider or switching the colour
scale computes nothing, and a new target class costs one backward pass through
the kept forward pass (an ``insight.gradcam.Pass``) of the few most recent
images. Two events asking about the same new image at once wait for one
computation instead of running two.

Bounded: at most ``max_images`` analyses (oldest dropped first) and, of those,
``max_passes`` kept forward passes (a pass holds what its backward reads: the
graph of layer2..layer4, or the prepacked engine's ReLU outputs; 10-15 MB at
batch 1). ``warm`` fills it with the shipped samples; the
server calls it in the background after start-up.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from insight.gradcam import Pass, analysis_of
from resnet import preprocess
from resnet.constants import NUM_CLASSES


@dataclass
class Entry:
    """One image, analysed: everything but the per-class Grad-CAMs is fixed after construction."""

    key: str  # sha256 of the file's bytes
    seen: np.ndarray  # (32, 32, 3) uint8: what the network is given
    size: tuple[int, int]  # (width, height) of the upload
    notes: list[str]  # sentences about conversions (greyscale, EXIF rotation, ...)
    probs: np.ndarray  # (10,) float32
    logits: np.ndarray  # (10,) float32
    features: dict[str, np.ndarray]  # "stem", "layer1".."layer4" -> (C, h, w) float32
    cams: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # class -> stage -> (h, w)
    extras: dict[tuple, Any] = field(default_factory=dict)  # other views' results for this image (see memo)

    @property
    def predicted(self) -> int:
        return int(np.argmax(self.probs))

    def input(self) -> torch.Tensor:
        """(1, 3, 32, 32): what the network is given, normalised, channels_last."""
        return model_input(self.seen)


class AnalysisCache:
    def __init__(self, make_pass: Callable[[torch.Tensor], Pass], max_images: int = 48, max_passes: int = 4) -> None:
        """``make_pass(x)`` runs the network on one model input (the explorer's is an
        ``insight.prepacked.PassMaker``: the fastest way that gives autograd's results)."""
        self.make_pass = make_pass
        self.max_images = max_images
        self.max_passes = max_passes
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._passes: OrderedDict[str, Pass] = OrderedDict()
        self._lock = threading.Lock()  # guards the two dicts and _computing
        self._computing: dict[str, threading.Event] = {}
        self.hits = self.misses = 0

    # ----- reading -----------------------------------------------------------------------------

    def entry(self, image: str | Path) -> Entry:
        """The analysis of the image file at ``image``: from the cache, or computed now."""
        data = preprocess.read_upload(image)
        key = hashlib.sha256(data).hexdigest()
        while True:
            with self._lock:
                found = self._entries.get(key)
                if found is not None:
                    self._entries.move_to_end(key)
                    self.hits += 1
                    return found
                waiting = self._computing.get(key)
                if waiting is None:
                    self._computing[key] = threading.Event()
                    self.misses += 1
                    break
            waiting.wait()  # another request is computing this very image; then read its result
        try:
            made = self._compute(key, data)
            with self._lock:
                self._entries[key] = made
                while len(self._entries) > self.max_images:
                    old, _ = self._entries.popitem(last=False)
                    self._drop_pass(old)
            return made
        finally:
            with self._lock:
                self._computing.pop(key).set()

    def cams(self, entry: Entry, target: int) -> dict[str, np.ndarray]:
        """Grad-CAM of ``target`` at every stage for an analysed image: one backward at most."""
        found = entry.cams.get(target)
        if found is not None:
            return found
        maps = {name: m[0].cpu().numpy() for name, m in self.kept_pass(entry).cams(target).items()}
        entry.cams[target] = maps
        return maps

    def kept_pass(self, entry: Entry) -> Pass:
        """The image's forward pass, kept for its other classes; run again if it was dropped.

        A view that expects a class change soon (the Grad-CAM tab, for the image on screen)
        calls this ahead of time, so that the change costs a backward only.
        """
        with self._lock:
            run = self._passes.get(entry.key)
            if run is not None:
                self._passes.move_to_end(entry.key)
                return run
        run = self.make_pass(model_input(entry.seen))
        self._keep_pass(entry.key, run)
        return run

    def every_class(self, entry: Entry) -> None:
        """Grad-CAM of all ten classes for an image, ahead of a change of class: one batched
        backward (about 0.2 s on 2 cores) after which any class is drawn without the network."""
        if len(entry.cams) == NUM_CLASSES:
            return
        maps = self.kept_pass(entry).cams_of_every_class()
        for c in range(NUM_CLASSES):
            entry.cams.setdefault(c, {name: m[c, 0].cpu().numpy() for name, m in maps.items()})

    def memo(self, entry: Entry, key: tuple, compute: Callable[[], Any]) -> Any:
        """A view's result for this image (e.g. a contrast map per class and method), computed once.

        It lives and is dropped with the image's entry, so the cache stays bounded.
        """
        if key not in entry.extras:
            entry.extras[key] = compute()
        return entry.extras[key]

    def warm(self, paths: Iterable[Path], then: Callable[[Entry], None] | None = None,
             on_error: Callable[[Path, Exception], None] | None = None) -> None:
        """Analyse ``paths`` now, calling ``then(entry)`` on each (e.g. to memo what a view
        shows first); a file that fails goes to ``on_error`` and the others go on. A server
        calls this from a background thread (``explorer.layout``)."""
        for path in paths:
            try:
                entry = self.entry(path)
                if then is not None:
                    then(entry)
            except Exception as exc:  # a broken sample must not stop the others
                if on_error is not None:
                    on_error(path, exc)

    def __len__(self) -> int:
        return len(self._entries)

    # ----- computing ---------------------------------------------------------------------------

    def _compute(self, key: str, data: bytes) -> Entry:
        img, notes = preprocess.load_image_with_notes(data)
        seen = preprocess.to_model_input(img).seen
        run = self.make_pass(model_input(seen))
        # The predicted class's maps are what every new image shows first.
        first = analysis_of(run)
        entry = Entry(key=key, seen=seen, size=img.size, notes=notes, probs=first.probs, logits=first.logits,
                      features=first.features)
        entry.cams[first.target] = first.cams
        self._keep_pass(key, run)
        return entry

    def _keep_pass(self, key: str, run: Pass) -> None:
        with self._lock:
            self._passes[key] = run
            self._passes.move_to_end(key)
            while len(self._passes) > self.max_passes:
                _, old = self._passes.popitem(last=False)
                old.close()

    def _drop_pass(self, key: str) -> None:
        run = self._passes.pop(key, None)
        if run is not None:
            run.close()


class Recent:
    """The last ``size`` values made by key: for what is cheap to remake but costly to keep
    for every cached image (e.g. the coloured 256x256 layers of a view)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._values: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
        value = make()
        with self._lock:
            self._values[key] = value
            while len(self._values) > self.size:
                self._values.popitem(last=False)
        return value


def model_input(seen: np.ndarray) -> torch.Tensor:
    # channels_last: what the served model's convolutions run fastest in on a CPU.
    x = preprocess.normalise(preprocess.images_to_pixels(seen))
    return x.contiguous(memory_format=torch.channels_last)
