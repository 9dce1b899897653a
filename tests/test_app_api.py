"""The explorer as a server: its API answers through gradio_client, refuses bad
uploads with a sentence and keeps serving, answers parallel clients correctly
and serves no file outside assets/. Also the figure builders and the Space
upload's dry run, offline.

One app server for the session (``server`` / ``client`` in conftest.py: ``python app.py``
on a free port), shared with the insight tabs' API tests.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from PIL import Image

from explorer.tabs import blocks, features, model, training
from insight import activations, anatomy
from resnet import CLASSES

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = sorted((ROOT / "assets" / "samples").glob("*.png"))


def classify(client, path):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), api_name="/classify")


def check_label(answer: dict, probs: np.ndarray) -> None:
    """A gr.Label answer: five classes, most likely first, with the model's probabilities."""
    confidences = answer["confidences"]
    assert len(confidences) == 5
    values = [c["confidence"] for c in confidences]
    assert values == sorted(values, reverse=True)
    for c in confidences:
        assert c["confidence"] == pytest.approx(float(probs[CLASSES.index(c["label"])]), abs=1e-4)
    assert answer["label"] == confidences[0]["label"]
    assert values[0] >= probs.max() - 1e-4


# ----- answers --------------------------------------------------------------------------------


def test_api_lists_named_endpoints(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/classify", "/analyze", "/gradcam", "/feature_maps", "/block_anatomy", "/contrast"} <= names


def test_a_move_made_while_its_last_answer_is_on_its_way_is_answered_too(client):
    """Gradio's default ("once") drops an event fired while the same one runs: a slider released or
    a sample clicked during a slow answer would leave the view drawn for the values before."""
    config = client.config
    components = {c["id"]: c for c in config["components"]}
    dropped = {d["api_name"]: [t[1] for t in d["targets"]] for d in config["dependencies"]
               if d["trigger_mode"] != "always_last"}
    assert dropped == {"replay_tick": ["tick"], "on_unload": ["unload"]}
    # The opening example and a new image are one analysis event, which the browser runs one at a
    # time: two events writing the same outputs would let a late opening answer replace a click's.
    writes_truth = [d for d in config["dependencies"]
                    if any(components[i].get("props", {}).get("elem_id") == "true-class" for i in d["outputs"])
                    and any(event == "load" for _, event in d["targets"])]
    assert len(writes_truth) == 1 and {event for _, event in writes_truth[0]["targets"]} == {"load", "change"}
    # The follow-up reads the tab on screen from the page into a component whose value the
    # browser sends (a gr.State's value is kept on the server, whatever the browser says).
    follow = next(d for d in config["dependencies"] if d["api_name"] == "follow")
    assert "offsetParent" in follow["js"]
    assert components[follow["inputs"][1]]["type"] != "state"


def test_classify_returns_top5_of_the_model(client, local_probs):
    for path in (SAMPLES[0], SAMPLES[-1]):
        check_label(classify(client, path), local_probs(path))


def test_gradcam_endpoint_returns_four_overlays_and_raw_maps(client):
    from gradio_client import handle_file

    sample = handle_file(str(SAMPLES[10]))
    gallery, note, raw = client.predict(sample, "cat", 0.5, "shared", api_name="/gradcam")
    assert len(gallery) == 4
    for item in gallery:
        with Image.open(item["image"]) as im:
            assert im.size == (256, 256)
    assert [c["caption"].split(" ")[0] for c in gallery] == ["layer1", "layer2", "layer3", "layer4"]
    assert "4x4" in gallery[3]["caption"] and "cat" in note
    raw = raw if isinstance(raw, dict) else json.loads(raw)
    assert raw["target"] == "cat"
    shapes = {k: np.asarray(v).shape for k, v in raw["maps"].items()}
    assert shapes == {"layer1": (32, 32), "layer2": (16, 16), "layer3": (8, 8), "layer4": (4, 4)}
    assert all(np.asarray(v).min() >= 0 for v in raw["maps"].values())
    other = client.predict(sample, "truck", 0.5, "shared", api_name="/gradcam")[2]
    other = other if isinstance(other, dict) else json.loads(other)
    assert any(not np.allclose(raw["maps"][k], other["maps"][k]) for k in raw["maps"])


def test_analyze_and_the_tab_endpoints(client, local_probs):
    from gradio_client import handle_file

    sample = handle_file(str(SAMPLES[3]))
    out = client.predict(sample, "predicted class", 0.4, "per map", api_name="/analyze")
    # What the first view shows, nothing more: the feature maps are drawn when their tab is open.
    label, truth, seen, gallery, note, raw = out
    check_label(label, local_probs(SAMPLES[3]))
    assert "True class: **automobile**" in truth  # samples are matched by content
    with Image.open(seen) as im:
        assert im.size == (256, 256)
    assert len(gallery) == 4 and set(raw["maps"]) == {"layer1", "layer2", "layer3", "layer4"}
    plots = client.predict(sample, 4, api_name="/feature_maps")
    assert len(plots) == 5
    stem = json.loads(plots[0]["plot"]) if isinstance(plots[0]["plot"], str) else plots[0]["plot"]
    assert sum(1 for t in stem["data"] if t["type"] == "heatmap") == 4  # n_channels=4
    anatomy, ratios = client.predict(sample, "layer3.0", "channel mean", 0, api_name="/block_anatomy")
    bars = json.loads(ratios["plot"])["data"][0]
    assert len(bars["x"]) == 16 and bars["x"][0] == "layer1.0"
    image, text = client.predict(sample, "cat", "Occlusion", 0.5, api_name="/contrast")
    assert Path(image).is_file() and "Occlusion" in text


# ----- bad inputs -----------------------------------------------------------------------------


def _bomb_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


BAD_UPLOADS = {
    "text.png": (b"this is not an image\n" * 20, "not an image"),
    "empty.jpg": (b"", "empty"),
    "truncated.png": (_png(Image.effect_noise((64, 64), 50).convert("RGB"))[:300], "truncated or corrupt"),
    "dot.png": (_png(Image.new("RGB", (1, 1))), "1x1"),
    "bomb.png": (_bomb_png(20000, 20000), "megapixels"),
}


@pytest.mark.parametrize("name", list(BAD_UPLOADS))
def test_bad_upload_gets_a_sentence_and_the_server_keeps_serving(client, local_probs, tmp_path, name):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    data, message = BAD_UPLOADS[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(path)), api_name="/classify")
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(path)), "predicted class", 0.5, "per map", api_name="/analyze")
    check_label(classify(client, SAMPLES[0]), local_probs(SAMPLES[0]))


def test_odd_but_valid_upload_is_classified(client, tmp_path):
    deep = tmp_path / "deep.png"
    Image.fromarray((np.arange(48 * 48).reshape(48, 48) * 28).astype(np.uint16)).save(deep)
    assert classify(client, deep)["label"] in CLASSES


def test_bad_arguments_get_a_sentence(client):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    sample = handle_file(str(SAMPLES[0]))
    # Gradio checks choices itself; either way the message names the bad value.
    with pytest.raises(AppError, match="rainbow"):
        client.predict(sample, "cat", 0.5, "rainbow", api_name="/gradcam")
    with pytest.raises(AppError, match="unicorn"):
        client.predict(sample, "unicorn", 0.5, "shared", api_name="/gradcam")
    with pytest.raises(AppError, match="layer9.9"):
        client.predict(sample, "layer9.9", "channel mean", 0, api_name="/block_anatomy")


def test_parallel_clients_get_their_own_answers(server, local_probs):
    from gradio_client import Client

    paths = SAMPLES[::6][:5]
    expected = {p: local_probs(p) for p in paths}

    def ask(path):
        return path, classify(Client(server, verbose=False), path)

    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        answers = list(pool.map(ask, paths * 2))
    for path, answer in answers:
        check_label(answer, expected[path])


# ----- file-system exposure -------------------------------------------------------------------


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_only_assets_are_served(server):
    assert _status(f"{server}gradio_api/file={SAMPLES[0]}") == 200
    for path in (ROOT / "app.py", ROOT / "resnet" / "weights.py", Path("/etc/passwd"), ROOT / "assets" / ".." / "app.py"):
        assert _status(f"{server}gradio_api/file={path}") in (403, 404), path


# ----- figures (in process) -------------------------------------------------------------------


def _history(n=4):
    return {
        "config": {},
        "epochs": [
            {"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5 + e / 10, "test_loss": 1.1 / e, "test_acc": 0.45 + e / 10,
             "lr": 0.1 / e, "epoch_seconds": 12.5, "images_per_second": 4000.0, "resolution": 32}
            for e in range(1, n + 1)
        ],
    }


def test_read_json_explains_what_is_missing(tmp_path):
    from resnet.files import AssetError, read_json

    with pytest.raises(AssetError, match="not available") as missing:
        read_json(tmp_path / "history.json")
    assert missing.value.missing
    (tmp_path / "history.json").write_text("{broken")
    with pytest.raises(AssetError, match="not readable JSON") as broken:
        read_json(tmp_path / "history.json")
    assert not broken.value.missing
    (tmp_path / "history.json").write_text("[1, 2]")
    with pytest.raises(AssetError, match="JSON object"):
        read_json(tmp_path / "history.json")
    (tmp_path / "history.json").write_text(json.dumps(_history()))
    assert read_json(tmp_path / "history.json")["epochs"][0]["epoch"] == 1


def test_training_figure_marks_final_accuracy_and_the_seed_notebook():
    fig = training.training_figure(_history())
    names = {t.name for t in fig.data}
    assert {"train loss", "test loss", "learning rate", "train accuracy", "test accuracy", "final test accuracy"} <= names
    lr = next(t for t in fig.data if t.name == "learning rate")
    assert lr.yaxis != next(t for t in fig.data if t.name == "train loss").yaxis  # a second axis
    assert any(s.y0 == pytest.approx(75.6) for s in fig.layout.shapes)
    final = next(t for t in fig.data if t.name == "final test accuracy")
    assert final.y[0] == pytest.approx(85.0) and final.x[0] == 4
    assert "epoch time" in next(t for t in fig.data if t.name == "test accuracy").hovertemplate
    with pytest.raises(ValueError):
        training.training_figure({"epochs": []})
    history = _history()
    history["epochs"][-1]["test_images"] = 1000
    assert "85.00%** on 1,000 test images" in training.training_summary(history)


def test_training_curves_mark_where_each_warm_restart_began():
    history = _history()
    assert not any(s.type == "line" and s.x0 == s.x1 for s in training.training_figure(history).layout.shapes)
    for row in history["epochs"]:
        row["run"] = 1 if row["epoch"] <= 2 else 2
    fig = training.training_figure(history)
    starts = [s for s in fig.layout.shapes if s.x0 == s.x1 == 2.5]
    assert len(starts) == 2, "a dashed line at the restart in both panels"
    assert any(a.text == "run 2" for a in fig.layout.annotations)
    assert "in 2 runs" in training.training_summary(history)


def test_feature_grid_has_one_heatmap_per_channel_on_one_scale():
    act = np.random.default_rng(0).random((64, 8, 8)).astype(np.float32)
    top = activations.top_channels(act, 6)
    fig = features.feature_grid("layer3", top.indices, top.maps, 4, 64)
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert len(heatmaps) == 6 and {t.coloraxis for t in heatmaps} == {"coloraxis"}
    assert f"channel {int(top.indices[0])}" in heatmaps[0].hovertemplate
    assert "6 most active of 64" in fig.layout.title.text
    go.Figure(fig.to_dict())  # built unvalidated for speed: plotly's validator must accept it


def test_anatomy_figure_is_valid_plotly():
    maps = {part: np.random.default_rng(1).normal(size=(8, 8)).astype(np.float32) for part in anatomy.ANATOMY_PARTS}
    fig = blocks.anatomy_figure("layer3.1", maps, None)
    go.Figure(fig.to_dict())
    assert [a.text for a in fig.layout.annotations] == list(anatomy.ANATOMY_PARTS)
    assert fig.layout.coloraxis.cmin == -fig.layout.coloraxis.cmax  # diverging, centred on 0


def test_model_card_and_architecture_markdown():
    text = model.card_markdown({"dataset": "CIFAR-10 (JPEG q75 copy)", "test_accuracy": 0.9312, "device": "1x H100"})
    assert "JPEG q75" in text and "93.12%" in text and "H100" in text
    assert "No model card" in model.card_markdown({})
    table = model.architecture_markdown([{"stage": "stem", "blocks": 0, "output_shape": (64, 32, 32), "parameters": 1792, "description": "x"}])
    assert "64 x 32 x 32" in table and "1,792" in table


# ----- deploying to a Space (offline) ---------------------------------------------------------


def _fake_repo(root: Path) -> Path:
    files = {
        "app.py": b"print()", "requirements.txt": b"gradio\n", "README.md": b"---\nsdk: gradio\n---\n",
        "explorer/__init__.py": b"", "explorer/tabs/gradcam.py": b"", "insight/__init__.py": b"",
        "resnet/__init__.py": b"", "resnet/model.py": b"", "resnet/sub/deep.py": b"", "resnet/__pycache__/x.cpython-311.pyc": b"",
        "assets/resnet50_cifar10.safetensors": b"\0" * (11 * 1024 * 1024), "assets/samples/cat_0.png": b"png",
        "tests/test_x.py": b"", "train/trainer.py": b"", "bench/app_latency.py": b"", "data/cifar10.tar.gz": b"",
        ".git/config": b"", "notes.md": b"", "resnet/model.pt": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_push_space_dry_run_lists_exactly_the_space_files(tmp_path):
    root = _fake_repo(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "train.push_space", "--repo-id", "someone/resnet-explorer", "--dry-run", "--root", str(root)],
        cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    listed = [line.split()[1] for line in out.stdout.splitlines() if line[:12].strip().replace(",", "").isdigit()]
    assert listed == [
        "README.md", "app.py", "assets/resnet50_cifar10.safetensors", "assets/samples/cat_0.png",
        "explorer/__init__.py", "explorer/tabs/gradcam.py", "insight/__init__.py",
        "requirements.txt", "resnet/__init__.py", "resnet/model.py", "resnet/sub/deep.py",
    ]
    big = next(line for line in out.stdout.splitlines() if "resnet50_cifar10.safetensors" in line)
    assert "> 10 MB" in big and "LFS/Xet" in big
    assert "Dry run: nothing was uploaded." in out.stdout


def test_push_space_dry_run_flags_a_missing_readme_or_app_module(tmp_path):
    from train import push_space

    root = _fake_repo(tmp_path)
    (root / "README.md").unlink()
    (root / "insight/__init__.py").unlink()
    files = push_space.selected_files(root)
    assert "README.md" not in {rel for rel, _ in files}
    found = push_space.problems(root, files)
    assert any("README.md is missing" in p for p in found)
    assert any("insight/__init__.py is missing" in p for p in found)
    assert push_space.main(["--repo-id", "someone/space", "--dry-run", "--root", str(root)]) == 1
    with pytest.raises(SystemExit):
        push_space.main(["--repo-id", "not-a-repo-id", "--dry-run"])


def test_training_curves_come_from_the_shipped_history(client):
    history = json.loads((ROOT / "assets" / "history.json").read_text())
    summary, plot = client.predict(api_name="/training_curves")
    final = history["epochs"][-1]["test_acc"]
    assert f"{final * 100:.2f}%" in summary
    figure = json.loads(plot["plot"])
    assert len(figure["data"][0]["x"]) == len(history["epochs"])
