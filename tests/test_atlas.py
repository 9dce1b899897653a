"""The channel atlas: what every channel of every stage responds to over a test set.

The computation is checked against a brute-force ranking of one full forward
pass; the file against its own contract; ``python -m train.atlas`` end to end
on the tiny data set; and the app's /channel_atlas endpoint on the shipped file.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import nonidentity_resnet50, tiny_images
from insight import atlas
from resnet.constants import CLASSES, NUM_CLASSES
from resnet.model import FEATURE_NAMES
from resnet.preprocess import images_to_pixels, normalise

ROOT = Path(__file__).resolve().parent.parent
PER_CLASS = 3
N = PER_CLASS * NUM_CLASSES
DEAD_STEM_CHANNEL = 5


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    images = np.concatenate([tiny_images(rng, c, PER_CLASS) for c in range(NUM_CLASSES)])
    return images, np.repeat(np.arange(NUM_CLASSES), PER_CLASS)


@pytest.fixture(scope="module")
def model():
    m = nonidentity_resnet50(seed=3)
    # One stem channel that a ReLU always zeroes: BN scale 0 and a negative shift.
    m.bn1.weight.data[DEAD_STEM_CHANNEL] = 0.0
    m.bn1.bias.data[DEAD_STEM_CHANNEL] = -1.0
    return m


@pytest.fixture(scope="module")
def features(model, data) -> dict[str, np.ndarray]:
    """Every stage's maps for all images from one forward pass: the reference the atlas is checked against."""
    with torch.inference_mode():
        x = normalise(images_to_pixels(data[0]))
        return {k: v.numpy() for k, v in model.forward_intermediates(x).features.items()}


@pytest.fixture(scope="module")
def computed(model, data) -> atlas.Atlas:
    # Batches of 7 split the 30 images unevenly: the running top-k merge is exercised at every boundary.
    return atlas.compute_atlas(model, *data, batch_size=7)


# The atlas runs batches of 7, the reference one batch of 30: float32 kernels differ by batch shape and by the
# number of threads, and the differences grow through the stages (seen: 1.4e-5 relative in layer2 on one thread).
RTOL, ATOL = 1e-4, 1e-5


def brute_force_top(maps: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, values, cells) per channel by sorting every image: highest max first, earlier image on ties."""
    n, c = maps.shape[:2]
    flat = maps.reshape(n, c, -1)
    peak, cell = flat.max(axis=2), flat.argmax(axis=2)
    rows = np.stack([np.lexsort((np.arange(n), -peak[:, ch]))[:k] for ch in range(c)])
    return rows, np.take_along_axis(peak.T, rows, 1), np.take_along_axis(cell.T, rows, 1)


def test_top_images_are_the_brute_force_ranking_with_the_cell_of_the_maximum(computed, features):
    for name in FEATURE_NAMES:
        stage = computed.stages[name]
        rows, values, cells = brute_force_top(features[name], atlas.TOP_K)
        assert stage.top_rows.shape == (features[name].shape[1], atlas.TOP_K)
        assert stage.grid == features[name].shape[2:]
        live = values[:, 0] > 0  # a dead channel's "top" rows are ties at 0, kept in test-set order
        np.testing.assert_array_equal(stage.top_rows, rows, err_msg=name)
        np.testing.assert_allclose(stage.top_values, values, rtol=RTOL, atol=ATOL, err_msg=name)
        np.testing.assert_array_equal(stage.top_cells[live], cells[live], err_msg=name)


def test_the_stored_cell_holds_the_stored_value_in_that_images_map(computed, features):
    stage = computed.stages["layer2"]
    h, w = stage.grid
    for channel in (0, 17, 300):
        for row, value, cell in zip(stage.top_rows[channel], stage.top_values[channel], stage.top_cells[channel]):
            y, x = divmod(int(cell), w)
            assert features["layer2"][row, channel, y, x] == pytest.approx(value, rel=RTOL, abs=ATOL)
            assert features["layer2"][row, channel].max() == pytest.approx(value, rel=RTOL, abs=ATOL)


def test_class_means_are_the_mean_of_each_classs_spatial_means(computed, features, data):
    labels = data[1]
    for name in FEATURE_NAMES:
        spatial = features[name].mean(axis=(2, 3))  # (N, C)
        expected = np.stack([spatial[labels == k].mean(axis=0) for k in range(NUM_CLASSES)], axis=1)
        np.testing.assert_allclose(computed.stages[name].class_means, expected, rtol=RTOL, atol=ATOL, err_msg=name)


def test_dead_channels_are_those_never_positive_and_ship_no_images(computed, features):
    for name in FEATURE_NAMES:
        never_positive = ~(features[name] > 0).any(axis=(0, 2, 3))
        np.testing.assert_array_equal(computed.stages[name].dead, never_positive, err_msg=name)
        assert atlas.stage_summary(computed.stages[name])["dead"] == int(never_positive.sum())
    stem = computed.stages["stem"]
    assert stem.dead[DEAD_STEM_CHANNEL]
    assert atlas.top_images(computed, "stem", DEAD_STEM_CHANNEL) == []
    details = atlas.channel_details(computed, "stem", DEAD_STEM_CHANNEL)
    assert details["dead"] and details["preferred_class"] is None and details["selectivity"] is None


def test_only_images_some_live_channel_ranks_are_stored(computed, data):
    wanted = set()
    for stage in computed.stages.values():
        wanted |= set(stage.top_rows[stage.top_values > 0].tolist())
    assert computed.image_rows.tolist() == sorted(wanted)
    for row in computed.image_rows:
        np.testing.assert_array_equal(computed.image(int(row)), data[0][row])


def test_selectivity_index_runs_from_0_for_no_preference_to_1_for_one_class():
    means = np.array([
        [1.0] * 10,  # every class alike
        [2.0] + [0.0] * 9,  # only the first class
        [2.0] + [1.0] * 9,  # (2 - 1) / (2 + 1)
        [0.0] * 10,  # dead: undefined
    ])
    si = atlas.selectivity(means)
    np.testing.assert_allclose(si[:3], [0.0, 1.0, 1 / 3])
    assert np.isnan(si[3])


def test_stage_summary_counts_selective_channels_and_preferred_classes(computed):
    stage = computed.stages["layer4"]
    summary = atlas.stage_summary(stage)
    si = atlas.selectivity(stage.class_means)[~stage.dead]
    assert summary["channels"] == 2048
    assert summary["selective"] == int((si >= atlas.SELECTIVE).sum())
    assert summary["selectivity_median"] == pytest.approx(float(np.median(si)))
    assert sum(summary["preferred_class_counts"]) == 2048 - summary["dead"]


def test_bad_inputs_are_refused_with_a_sentence(model, data):
    images, labels = data
    with pytest.raises(ValueError, match="uint8"):
        atlas.compute_atlas(model, images.astype(np.float32), labels)
    with pytest.raises(ValueError, match="every class"):
        atlas.compute_atlas(model, images[labels != 3], labels[labels != 3])


# ----- the file ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tagged(computed) -> atlas.Atlas:
    """The computed atlas with the metadata ``write_atlas`` adds."""
    return dataclasses.replace(computed, meta={"weights_sha256": "ab" * 32, "dataset": "tiny test split"})


@pytest.fixture(scope="module")
def arrays(tagged) -> dict[str, np.ndarray]:
    return atlas.atlas_arrays(tagged)


def _save(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez_compressed(path, **arrays)
    return path


def test_file_round_trip_keeps_every_array_and_every_pixel(tagged, tmp_path):
    computed = tagged
    path = tmp_path / atlas.ATLAS_FILE
    path.write_bytes(atlas.atlas_bytes(computed))
    loaded = atlas.load_atlas(path)
    assert loaded.meta["weights_sha256"] == computed.meta["weights_sha256"] and loaded.meta["dataset"] == "tiny test split"
    assert loaded.meta["top_k"] == atlas.TOP_K and loaded.n_images == N
    np.testing.assert_array_equal(loaded.labels, computed.labels)
    np.testing.assert_array_equal(loaded.image_rows, computed.image_rows)
    for name in FEATURE_NAMES:
        a, b = computed.stages[name], loaded.stages[name]
        assert a.grid == b.grid
        for field in ("top_rows", "top_values", "top_cells", "class_means"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=f"{name}.{field}")
    for row in computed.image_rows:  # lossless: the very pixels the network saw
        np.testing.assert_array_equal(loaded.image(int(row)), computed.image(int(row)))
    with pytest.raises(atlas.AtlasError, match="not stored"):
        loaded.image(int(np.setdiff1d(np.arange(N), loaded.image_rows)[0]) if len(loaded.image_rows) < N else N)


def test_images_are_stored_as_their_own_files_when_those_decode_to_exactly_their_pixels(tagged, tmp_path):
    import io

    from PIL import Image

    def jpeg(image: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=75)
        return buffer.getvalue()

    computed = tagged
    # What a JPEG data set holds: files whose decoded pixels are the images.
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(jpeg(im))).convert("RGB")) for im in computed.images])
    as_files = atlas.Atlas(computed.stages, computed.labels, computed.image_rows, decoded, computed.meta)
    sources = [jpeg(im) for im in computed.images]
    sources[0] = jpeg(np.zeros_like(computed.images[0]))  # a file that is not this image's: never stored for it
    blob, offsets = atlas.encode_images(as_files.images, sources)
    stored = [blob[offsets[i]:offsets[i + 1]].tobytes() for i in range(len(sources))]
    assert stored[1:] == sources[1:] and stored[0] != sources[0]
    path = tmp_path / atlas.ATLAS_FILE
    path.write_bytes(atlas.atlas_bytes(as_files, sources))
    loaded = atlas.load_atlas(path)
    for i, row in enumerate(computed.image_rows):  # either way, exactly the pixels the network saw
        np.testing.assert_array_equal(loaded.image(int(row)), decoded[i])
    assert path.stat().st_size < len(atlas.atlas_bytes(as_files))  # JPEG files are smaller than lossless WebP


def _corrupt(arrays, **changes):
    out = dict(arrays)
    for key, value in changes.items():
        if value is None:
            del out[key]
        else:
            out[key] = value(out[key]) if callable(value) else value
    return out


def _unsorted(values: np.ndarray) -> np.ndarray:
    values = values.copy()
    values[0] = values[0][::-1]
    return values


def _negative(values: np.ndarray) -> np.ndarray:
    values = values.copy()
    values[0, -1] = -1.0
    return values


BROKEN = {
    "a missing stage array": (dict(**{"layer3.top_rows": None}), "lacks the arrays layer3.top_rows"),
    "another format": (dict(meta=np.array('{"format": 99, "image_format": "image-files"}')), "format 99"),
    "rows beyond the test set": (dict(**{"layer1.top_rows": lambda r: r + N}), "outside rows"),
    "cells beyond the grid": (dict(**{"layer4.top_cells": lambda c: c + 16}), "outside its 4x4 grid"),
    "an unsorted top list": (dict(**{"stem.top_values": _unsorted}), "not sorted"),
    "a negative activation": (dict(**{"layer2.top_values": _negative}), "not finite and >= 0"),
    "a top image not stored": (dict(image_rows=lambda r: r[1:], image_offsets=lambda o: o[1:] - o[1]),
                               "lacks 1 of the test images"),
    "offsets that do not cut the bytes": (dict(image_offsets=lambda o: o * 2), "image offsets"),
    "class means of the wrong shape": (dict(**{"stem.class_means": lambda m: m[:, :9]}), "class means of shape"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_an_inconsistent_file_is_refused_with_a_sentence(arrays, tmp_path, case):
    changes, message = BROKEN[case]
    if case == "a top image not stored":  # drop the first stored image and its bytes
        changes = dict(changes, image_data=lambda d: d[int(arrays["image_offsets"][1]):])
    path = _save(tmp_path / "atlas.npz", _corrupt(arrays, **changes))
    with pytest.raises(atlas.AtlasError, match=message) as err:
        atlas.load_atlas(path)
    assert "python -m train.atlas" in str(err.value) and not err.value.missing


def test_a_missing_or_unreadable_file_says_so(tmp_path):
    with pytest.raises(atlas.AtlasError, match="No channel atlas") as err:
        atlas.load_atlas(tmp_path / "nothing.npz")
    assert err.value.missing
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file at all")
    with pytest.raises(atlas.AtlasError, match="not a readable .npz"):
        atlas.load_atlas(junk)


def test_the_app_holder_tells_whether_the_atlas_describes_the_served_weights(tagged, tmp_path):
    computed = tagged
    path = tmp_path / atlas.ATLAS_FILE
    path.write_bytes(atlas.atlas_bytes(computed))
    asked = []

    def served():
        asked.append(1)
        return computed.meta["weights_sha256"]

    holder = atlas.LazyAtlas(path, served)
    assert holder.problem() is None and holder.matches_weights() and holder.matches_weights()
    assert len(asked) == 1  # the served weights are hashed once
    assert not atlas.LazyAtlas(path, lambda: "cd" * 32).matches_weights()
    missing = atlas.LazyAtlas(tmp_path / "absent.npz", served)
    assert "python -m train.atlas" in missing.problem()


def test_predictions_line_up_only_with_an_evaluation_of_the_same_images(tagged):
    from conftest import make_evaluation

    # The same class-sorted order, data set and weights as the atlas's 30 images.
    ev = dict(make_evaluation(per_class=PER_CLASS), dataset="tiny test split", weights_sha256="ab" * 32)
    ev["predictions"] = {k: np.asarray(v) for k, v in ev["predictions"].items()}
    preds, why = atlas.aligned_predictions(tagged, ev)
    assert why == "" and np.array_equal(preds, ev["predictions"]["pred"])
    items = atlas.top_images(tagged, "layer4", 0, preds)
    assert items and [t.pred for t in items] == [int(ev["predictions"]["pred"][t.row]) for t in items]
    assert [t.label for t in items] == [t.row // PER_CLASS for t in items]

    shuffled = dict(ev, predictions=dict(ev["predictions"], label=ev["predictions"]["label"][::-1]))
    assert atlas.aligned_predictions(tagged, shuffled) == (
        None, "Predicted classes are not shown: evaluation.json lists the test images with other labels than the atlas.")
    assert "different weights" in atlas.aligned_predictions(tagged, dict(ev, weights_sha256="ef" * 32))[1]
    assert "on CIFAR-10, the atlas on tiny" in atlas.aligned_predictions(tagged, dict(ev, dataset="CIFAR-10"))[1]
    assert "covers 40 test images" in atlas.aligned_predictions(tagged, make_evaluation(per_class=PER_CLASS + 1))[1]


# ----- python -m train.atlas ------------------------------------------------------------------


def test_the_command_writes_an_atlas_tied_to_the_weights_it_was_given(tiny_cifar, tmp_path, capsys):
    from resnet.weights import save_weights
    from train.atlas import main

    weights = save_weights(nonidentity_resnet50(seed=4), tmp_path / "w.safetensors")
    out = tmp_path / "assets"
    assert main(["--weights", str(weights), "--data", str(tiny_cifar.archive), "--out", str(out),
                 "--device", "cpu", "--batch-size", "8"]) == 0
    loaded = atlas.load_atlas(out / atlas.ATLAS_FILE)
    assert loaded.meta["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert loaded.meta["dataset"] == "CIFAR-10 (JPEG q75 copy) test split"
    assert loaded.meta["cpu_seconds"] >= 0 and loaded.meta["device"] == "cpu"
    assert loaded.n_images == tiny_cifar.test_per_class * NUM_CLASSES
    printed = capsys.readouterr().out
    assert "channel_atlas.npz" in printed and " MB (" in printed and "process CPU" in printed
    for name in FEATURE_NAMES:
        assert f"{name}:" in printed


def test_write_atlas_ties_the_file_to_the_weights_in_the_assets_folder(tiny_cifar, tmp_path):
    from resnet.weights import WEIGHTS_FILE, WeightsError, load_pretrained, save_weights
    from train.atlas import write_atlas
    from train.data import load_cifar10

    test = load_cifar10(tiny_cifar.archive).test
    with pytest.raises(WeightsError, match="No weights"):
        write_atlas(nonidentity_resnet50(), test, tmp_path, device="cpu", show_progress=False)
    save_weights(nonidentity_resnet50(seed=5), tmp_path / WEIGHTS_FILE)
    model, _ = load_pretrained(tmp_path)
    summary = write_atlas(model, test, tmp_path, device="cpu", batch_size=16, dataset="tiny", show_progress=False)
    assert summary["bytes"] == (tmp_path / atlas.ATLAS_FILE).stat().st_size and summary["within_target"]
    assert [s["stage"] for s in summary["stages"]] == list(FEATURE_NAMES)
    assert atlas.LazyAtlas(tmp_path / atlas.ATLAS_FILE, lambda: atlas.sha256_of(tmp_path / WEIGHTS_FILE)).matches_weights()


@pytest.mark.parametrize("args, message", [
    (["--data", "/nonexistent/cifar"], "does not exist"),
    (["--batch-size", "0"], "at least 1"),
    (["--weights", "/nonexistent/w.safetensors"], "No weights file"),
])
def test_the_command_refuses_bad_arguments_with_a_sentence(args, message, tmp_path, tiny_cifar, capsys):
    from train.atlas import main

    base = {"--data": str(tiny_cifar.archive), "--out": str(tmp_path), "--device": "cpu"}
    base.update(dict(zip(args[::2], args[1::2])))
    assert main([x for kv in base.items() for x in kv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / atlas.ATLAS_FILE).exists()


# ----- the shipped file and the endpoint -------------------------------------------------------


SHIPPED = ROOT / "assets" / atlas.ATLAS_FILE


def test_the_shipped_atlas_is_valid_within_the_size_target_and_matches_the_shipped_weights():
    if not SHIPPED.exists():
        pytest.fail(f"{SHIPPED} is missing: {atlas.HOW_TO_MAKE}")
    assert SHIPPED.stat().st_size <= atlas.SIZE_TARGET
    shipped = atlas.load_atlas(SHIPPED)
    assert shipped.n_images == 10_000 and shipped.top_k == atlas.TOP_K
    assert shipped.meta["weights_sha256"] == atlas.sha256_of(ROOT / "assets" / "resnet50_cifar10.safetensors")
    assert "JPEG q75" in shipped.meta["dataset"]


def test_channel_atlas_endpoint_returns_the_top_images_and_class_means(client):
    shipped = atlas.load_atlas(SHIPPED)
    stage = shipped.stages["layer4"]
    channel = int(np.flatnonzero(~stage.dead)[0])
    gallery, details, note = client.predict("layer4", channel, api_name="/channel_atlas")
    expected_rows = [int(r) for r, v in zip(stage.top_rows[channel], stage.top_values[channel]) if v > 0]
    assert [t["row"] for t in details["top"]] == expected_rows
    assert len(gallery) == len(expected_rows)
    for item, row in zip(gallery, expected_rows):
        true, pred = item["caption"].split(" · ")[0].split(" / ")
        assert true == CLASSES[int(shipped.labels[row])] and pred in CLASSES and f" · #{row} · " in item["caption"]
        with Image.open(item["image"]) as im:
            assert im.size == (features_module().ATLAS_THUMB,) * 2
    np.testing.assert_allclose(list(details["class_means"].values()), stage.class_means[channel], rtol=1e-6)
    assert list(details["class_means"]) == list(CLASSES)
    assert f"layer4 channel {channel}" in note and "prefers" in note


def test_the_atlas_endpoints_are_named_and_its_glue_stays_private(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/channel_atlas", "/channel_map"} <= names
    assert not {n for n in names if n.startswith("/atlas_")}


def test_channel_atlas_endpoint_refuses_a_channel_the_stage_does_not_have(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=r"layer1 has 256 channels, numbered 0\.\.255"):
        client.predict("layer1", 256, api_name="/channel_atlas")
    with pytest.raises(AppError, match="layer9 is not in the list of choices"):  # Gradio's own check of the dropdown
        client.predict("layer9", 0, api_name="/channel_atlas")


def test_channel_map_shows_the_channel_on_an_image(client):
    from gradio_client import handle_file

    image, note = client.predict(handle_file(str(ROOT / "assets" / "samples" / "cat_0.png")), "layer3", 5,
                                 api_name="/channel_map")
    assert Path(image).is_file() and "layer3 channel 5 on the current image (8x8 map" in note


def test_without_an_atlas_file_the_tab_says_so_in_a_sentence(tmp_path, monkeypatch):
    from explorer.tabs import features

    monkeypatch.setattr(features, "ATLAS", atlas.LazyAtlas(tmp_path / "absent.npz", lambda: None))
    gallery, details, note = features.channel_atlas("layer4", 3)
    assert gallery == [] and details == {}
    assert note.startswith("**The channel atlas is not available.** No channel atlas at")
    overview = features.open_atlas(False, "layer4", 3)
    assert "python -m train.atlas" in overview[0] and overview[-1] is True


def test_an_atlas_of_other_weights_is_shown_with_a_warning(tagged, tmp_path, monkeypatch):
    from explorer.tabs import features

    path = tmp_path / atlas.ATLAS_FILE
    path.write_bytes(atlas.atlas_bytes(tagged))
    monkeypatch.setattr(features, "ATLAS", atlas.LazyAtlas(path, lambda: "0" * 64))
    gallery, details, note = features.channel_atlas("layer2", 1)
    assert note.startswith("**This atlas does not describe the model on this page:**")
    assert details["stage"] == "layer2" and len(gallery) == len(details["top"])
    assert "does not describe" in features.open_atlas(False, "layer2", 1)[0]


def test_class_means_figure_highlights_the_preferred_class():
    details = {"stage": "layer4", "channel": 7, "dead": False, "preferred_class": "cat", "selectivity": 0.4,
               "class_means": {c: (2.0 if c == "cat" else 1.0) for c in CLASSES}}
    fig = features_module().class_means_figure(details)
    bar = fig.data[0]
    assert list(bar.x) == list(CLASSES) and bar.y[CLASSES.index("cat")] == 2.0
    colours = list(bar.marker.color)
    assert colours[CLASSES.index("cat")] != colours[0] and len(set(colours)) == 2
    assert "selectivity 0.40" in fig.layout.title.text
    assert features_module().class_means_figure({}) is None


def features_module():
    from explorer.tabs import features

    return features
