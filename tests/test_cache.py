"""The explorer's per-image cache: an image is analysed once, whatever asks about it and how often.

The network's forward passes are counted with a hook on its first convolution.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import nonidentity_resnet50
from explorer.cache import AnalysisCache
from insight import gradcam
from resnet import STAGE_NAMES
from resnet.preprocess import ImageInputError


@pytest.fixture(scope="module")
def model(single_torch_thread):
    return nonidentity_resnet50(readout_scale=0.05)


@pytest.fixture()
def forwards(model):
    calls = [0]
    handle = model.conv1.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    yield calls
    handle.remove()


def autograd(model):
    """Passes through autograd on ``model``: the hook above sees each one's forward."""
    return lambda x: gradcam.GradCamPass(model, x)


def write_image(folder: Path, name: str, seed: int, size: int = 40) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    path = folder / name
    Image.fromarray(pixels).save(path)
    return path


def test_the_same_content_under_another_name_is_not_computed_again(model, forwards, tmp_path):
    cache = AnalysisCache(autograd(model))
    first = write_image(tmp_path, "a.png", 0)
    copy = tmp_path / "upload-of-the-same.png"
    copy.write_bytes(first.read_bytes())
    a = cache.entry(first)
    assert forwards[0] == 1
    b = cache.entry(copy)
    assert b is a and forwards[0] == 1
    assert (cache.hits, cache.misses) == (1, 1)
    assert a.seen.shape == (32, 32, 3) and a.size == (40, 40)
    assert set(a.features) == {"stem", *STAGE_NAMES}
    assert list(a.cams) == [a.predicted]  # the prediction's maps come with the analysis


def test_another_class_costs_a_backward_through_the_kept_forward(model, forwards, tmp_path):
    cache = AnalysisCache(autograd(model))
    entry = cache.entry(write_image(tmp_path, "a.png", 1))
    other = (entry.predicted + 1) % 10
    maps = cache.cams(entry, other)
    assert forwards[0] == 1
    reference = gradcam.analyze(model, entry.input().contiguous(), other).cams
    for stage in STAGE_NAMES:
        np.testing.assert_allclose(maps[stage], reference[stage], rtol=1e-4, atol=1e-6)
    assert cache.cams(entry, other) is maps  # asked again: nothing to compute


def test_a_dropped_forward_is_run_again_once(model, forwards, tmp_path):
    cache = AnalysisCache(autograd(model), max_images=10, max_passes=1)
    first = cache.entry(write_image(tmp_path, "a.png", 2))
    cache.entry(write_image(tmp_path, "b.png", 3))  # keeps only b's forward
    assert forwards[0] == 2
    cache.cams(first, 0)
    cache.cams(first, 1)
    assert forwards[0] == 3


def test_it_stays_bounded(model, tmp_path):
    cache = AnalysisCache(autograd(model), max_images=3, max_passes=2)
    entries = [cache.entry(write_image(tmp_path, f"{i}.png", 10 + i)) for i in range(5)]
    assert len(cache) == 3 and len(cache._passes) == 2
    assert cache.entry(tmp_path / "4.png") is entries[4]  # the newest stay
    assert cache.memo(entries[4], ("view", 1), lambda: "computed") == "computed"
    assert cache.memo(entries[4], ("view", 1), lambda: "again") == "computed"


def test_requests_for_the_same_new_image_at_once_share_one_computation(model, forwards, tmp_path):
    cache = AnalysisCache(autograd(model))
    path = write_image(tmp_path, "a.png", 4)
    start = threading.Barrier(4)
    got = []

    def ask():
        start.wait()
        got.append(cache.entry(path))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(got) == 4 and all(e is got[0] for e in got)
    assert forwards[0] == 1


def test_a_bad_upload_is_refused_and_leaves_the_cache_working(model, tmp_path):
    cache = AnalysisCache(autograd(model))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    for _ in range(2):  # the failed key is not left "being computed": a retry fails the same way, at once
        with pytest.raises(ImageInputError, match="not an image"):
            cache.entry(bad)
    with pytest.raises(ImageInputError, match="did not arrive"):
        cache.entry(tmp_path / "missing.png")
    assert len(cache) == 0
    assert cache.entry(write_image(tmp_path, "good.png", 5)).seen.shape == (32, 32, 3)


def test_warming_analyses_every_file_and_reports_broken_ones(model, tmp_path):
    cache = AnalysisCache(autograd(model))
    good = [write_image(tmp_path, f"{i}.png", 20 + i) for i in range(2)]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG garbage")
    errors = []
    cache.warm([good[0], broken, good[1]], on_error=lambda path, exc: errors.append(path))
    assert len(cache) == 2 and errors == [broken]
    assert cache.entry(good[1]) is not None and cache.misses == 3


def test_recent_values_are_remade_only_once_they_fall_out() -> None:
    from explorer.cache import Recent

    made = []
    recent = Recent(2)

    def make(key):
        made.append(key)
        return key * 10

    assert [recent.get(k, lambda k=k: make(k)) for k in (1, 2, 1, 3, 1, 2)] == [10, 20, 10, 30, 10, 20]
    assert made == [1, 2, 3, 2]  # 2 fell out when 3 came (1 had just been used)


def test_every_class_is_ready_after_one_batched_backward(model, forwards, tmp_path) -> None:
    cache = AnalysisCache(autograd(model))
    entry = cache.entry(write_image(tmp_path, "a.png", 6))
    predicted = {k: v.copy() for k, v in entry.cams[entry.predicted].items()}
    cache.every_class(entry)
    assert sorted(entry.cams) == list(range(10)) and forwards[0] == 1
    for stage, m in predicted.items():  # what was there stays
        np.testing.assert_array_equal(entry.cams[entry.predicted][stage], m)
    reference = gradcam.analyze(model, entry.input().contiguous(), 7).cams
    for stage in STAGE_NAMES:  # on the map's scale: a batched backward sums in another order
        top = float(reference[stage].max())
        np.testing.assert_allclose(cache.cams(entry, 7)[stage], reference[stage], rtol=1e-4, atol=1e-5 * top)
