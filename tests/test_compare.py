"""Explore your own ResNet-50: the Compare tab's handler in-process, and the app started on other weights.

In-process: the same image through the app's model and an uploaded checkpoint (top-5, Grad-CAM at
every stage for one target, block ratios), a refused upload keeping the previous one, one model
per session with a server-wide cap, and uploads deleted from Gradio's temporary folder (never
anything outside it). As a server: ``python app.py --weights PATH`` says in its header which
weights it shows, answers with them, says the training-dependent views are not available, and
serves /compare to gradio_client; bad weights stop the start-up with one sentence.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
import urllib.request
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch

from conftest import ROOT, make_evaluation, nonidentity_resnet50, start_app, write_assets
from resnet import CLASSES, preprocess
from resnet.weights import WEIGHTS_FILE, load_checkpoint

SAMPLES = ROOT / "assets" / "samples"
CAT = SAMPLES / "cat_0.png"
SHIPPED = ROOT / "assets" / WEIGHTS_FILE

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def theirs(tmp_path_factory: pytest.TempPathFactory):
    """A random ResNet-50 saved the way DDP training scripts do, in float16: 47 MB, written once."""
    path = tmp_path_factory.mktemp("theirs") / "ddp-resnet50.pt"
    state = nonidentity_resnet50(seed=1, readout_scale=0.1).state_dict()
    torch.save({"state_dict": {f"module.{k}": v.half() if v.is_floating_point() else v for k, v in state.items()}}, path)
    yield path
    path.unlink()


def probs_of(model: torch.nn.Module, image: Path) -> np.ndarray:
    x = preprocess.to_model_input(preprocess.load_image(image)).tensor
    with torch.no_grad():
        return torch.softmax(model(x), 1)[0].numpy()


def same_top5(label: dict, probs: np.ndarray) -> None:
    """A top-5 (handler dict or gr.Label API answer) holds the model's five largest probabilities."""
    if "confidences" in label:
        label = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert list(label) == [CLASSES[i] for i in np.argsort(-probs, kind="stable")[:5]]
    for name, p in label.items():
        assert p == pytest.approx(float(probs[CLASSES.index(name)]), abs=1e-4)


# ----- the handler, in-process -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tab():
    from explorer.tabs import compare

    return compare


@pytest.fixture()
def uploads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tab) -> Path:
    """Gradio's upload folder, moved into this test's tmp dir; no session holds a model before or after."""
    folder = tmp_path / "gradio-uploads"
    folder.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(folder))
    tab._LIVE.clear()
    yield folder
    tab._LIVE.clear()


def uploaded(folder: Path, source: Path, digest: str = "a") -> str:
    """What Gradio hands a handler: a copy of the file in <upload folder>/<content hash>/<name>."""
    target = folder / digest / source.name
    target.parent.mkdir()
    target.write_bytes(source.read_bytes())
    return str(target)


def session(name: str = "s1"):
    return types.SimpleNamespace(session_hash=name)


def test_the_same_image_goes_through_both_models_side_by_side(tab, theirs: Path, uploads: Path) -> None:
    from explorer.context import MODEL
    from insight import anatomy

    upload = uploaded(uploads, theirs)
    second, note, app_top, your_top, app_cams, your_cams, figure, raw = tab.compare(
        str(CAT), upload, "cat", None, session())
    other = load_checkpoint(theirs).model
    same_top5(app_top, probs_of(MODEL, CAT))
    same_top5(your_top, probs_of(other, CAT))
    for cams in (app_cams, your_cams):
        assert [caption.split(" ")[0] for _, caption in cams] == ["layer1", "layer2", "layer3", "layer4"]
        assert all(image.shape == (256, 256, 3) for image, _ in cams)
    # One target for both models: the class asked for.
    assert raw["target"] == "cat" and "explain **cat**" in note
    assert "ddp-resnet50.pt" in note and "prefix `module.` removed" in note
    x = preprocess.to_model_input(preprocess.load_image(CAT)).tensor
    for trace, model in zip(figure.data, (MODEL, other)):
        assert len(trace.y) == 16
        np.testing.assert_allclose(trace.y, anatomy.residual_anatomy(model, x).ratios, rtol=1e-4)
    assert list(raw["models"]["your weights"]["ratios"])[0] == "layer1.0"


def test_without_a_target_both_models_explain_what_the_apps_model_predicts(tab, theirs: Path, uploads: Path) -> None:
    from explorer.context import MODEL

    *_, raw = tab.compare(str(CAT), uploaded(uploads, theirs), "predicted class", None, session())
    assert raw["target"] == CLASSES[int(np.argmax(probs_of(MODEL, CAT)))]


def test_an_upload_without_an_image_loads_and_waits_for_one(tab, theirs: Path, uploads: Path) -> None:
    second, note, *outputs = tab.compare(None, uploaded(uploads, theirs), "predicted class", None, session())
    assert second.checkpoint is not None and "Pick or upload an image" in note
    assert outputs[:4] == [None, None, [], []]
    # Picking an image later compares with the model this session already holds.
    assert tab.compare_loaded(str(CAT), "dog", second)[-1]["target"] == "dog"


def test_a_refused_upload_keeps_the_previous_model_and_is_deleted(tab, theirs: Path, uploads: Path) -> None:
    good = uploaded(uploads, theirs, "good")
    second = tab.compare(str(CAT), good, "cat", None, session())[0]
    empty = uploads / "empty" / "empty.pt"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    with pytest.raises(gr.Error, match="empty.pt is empty"):
        tab.compare(str(CAT), str(empty), "cat", second, session())
    assert not empty.exists()
    assert tab._LIVE["s1"] is second and Path(good).exists()
    your_top = tab.compare_loaded(str(CAT), "cat", second)[3]
    same_top5(your_top, probs_of(load_checkpoint(theirs).model, CAT))


def test_a_new_upload_replaces_the_sessions_model_and_its_file(tab, theirs: Path, uploads: Path) -> None:
    first = uploaded(uploads, theirs, "first")
    second = tab.compare(None, first, "cat", None, session())[0]
    replacement = tab.compare(None, uploaded(uploads, SHIPPED, "shipped"), "cat", second, session())[0]
    assert second.checkpoint is None and not Path(first).exists() and not Path(first).parent.exists()
    assert tab._LIVE == {"s1": replacement} and replacement.checkpoint.name == WEIGHTS_FILE


def test_closing_the_page_frees_the_model_and_deletes_the_upload(tab, theirs: Path, uploads: Path) -> None:
    path = uploaded(uploads, theirs)
    second = tab.compare(None, path, "cat", None, session("mine"))[0]
    # Gradio names an upload by its content: a second session holding the same file keeps it alive.
    other = tab.compare(None, path, "cat", None, session("other"))[0]
    tab.on_unload(session("mine"))
    assert second.checkpoint is None and Path(path).exists()
    # The other session's state expires: the last holder gone, the file goes too.
    tab._forget(other)
    assert other.checkpoint is None and not Path(path).exists() and tab._LIVE == {}
    assert tab.compare_loaded(str(CAT), "cat", second)[1] == tab.NO_WEIGHTS


def test_files_outside_gradios_upload_folder_are_never_deleted(tab, tmp_path: Path, uploads: Path) -> None:
    outside = tmp_path / "mine.pt"
    outside.write_bytes(b"")
    with pytest.raises(gr.Error, match="is empty"):
        tab.compare(None, str(outside), "cat", None, session())
    assert outside.exists()
    second = tab.compare(None, str(SHIPPED), "cat", None, session())[0]
    tab.on_unload(session())
    assert second.checkpoint is None and SHIPPED.exists()


def test_the_server_holds_a_limited_number_of_uploaded_models(tab, theirs: Path, uploads: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tab, "MAX_LIVE", 1)
    path = uploaded(uploads, theirs)
    tab.compare(None, path, "cat", None, session("first"))
    with pytest.raises(gr.Error, match="already holds 1 uploaded models"):
        tab.compare(None, path, "cat", None, session("second"))
    # The session that holds one may still replace it.
    tab.compare(None, uploaded(uploads, SHIPPED, "shipped"), "cat", None, session("first"))


def test_a_bad_target_is_refused_before_any_weights_are_read(tab, uploads: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tab, "load_checkpoint", lambda path: pytest.fail("weights read for a bad request"))
    with pytest.raises(gr.Error, match="Unknown target class 'giraffe'"):
        tab.compare(str(CAT), str(SHIPPED), "giraffe", None, session())


def test_a_new_image_is_compared_with_the_model_uploaded_before(tab, theirs: Path, uploads: Path) -> None:
    second = tab.compare(None, uploaded(uploads, theirs), "cat", None, session())[0]
    _, note, app_top, your_top, app_cams, your_cams, figure, raw = tab.compare_loaded(str(CAT), "cat", second)
    assert len(app_cams) == len(your_cams) == 4 and raw["target"] == "cat"


def test_no_upload_yet_says_what_to_do(tab) -> None:
    assert tab.compare_loaded(str(CAT), "cat", None) == (None, tab.NO_WEIGHTS, None, None, [], [], None, None)


# ----- the app started on other weights ----------------------------------------------------------


def test_other_weights_get_test_set_views_only_from_an_evaluation_made_for_them(tmp_path: Path) -> None:
    from explorer.context import _UserTestSet
    from insight.testset import TestSetError

    weights = types.SimpleNamespace(sha256="ab" * 32, describe=lambda: "`mine.pt` (torch.save state dict)")
    with pytest.raises(TestSetError, match="`mine.pt` .* were not trained by this project.*--evaluation DIR"):
        _ = _UserTestSet(None, weights).evaluation
    ev = write_assets(tmp_path / "mine", dict(make_evaluation(), weights_sha256="ab" * 32))
    assert _UserTestSet(str(tmp_path / "mine"), weights).evaluation["n"] == ev["n"]
    assert _UserTestSet(str(tmp_path / "mine"), weights).available() is None
    write_assets(tmp_path / "theirs", dict(ev, weights_sha256="cd" * 32))
    with pytest.raises(TestSetError, match="made for other weights \\(sha256 cdcdcdcdcdcd; these are abababababab\\)"):
        _ = _UserTestSet(str(tmp_path / "theirs"), weights).evaluation


@pytest.fixture(scope="module")
def other_app(theirs: Path, tmp_path_factory: pytest.TempPathFactory):
    uploads = tmp_path_factory.mktemp("uploads")
    with start_app(tmp_path_factory.mktemp("log"), "--weights", str(theirs), GRADIO_TEMP_DIR=str(uploads)) as url:
        yield url, uploads


@pytest.fixture(scope="module")
def other_client(other_app):
    from gradio_client import Client

    return Client(other_app[0], verbose=False)


def page_markdown(url: str) -> str:
    with urllib.request.urlopen(url + "config", timeout=30) as response:
        config = json.load(response)
    return "\n".join(c["props"]["value"] for c in config["components"]
                     if c.get("type") == "markdown" and isinstance(c.get("props", {}).get("value"), str))


def test_started_on_other_weights_the_header_and_model_card_say_which(other_app) -> None:
    text = page_markdown(other_app[0])
    assert "**Showing other weights:** `ddp-resnet50.pt` (torch.save state dict under 'state_dict'" in text
    assert "the training curves, the replay and the shipped test-set results are not available for them" in text
    assert "trained elsewhere" in text and "38.90%" not in text  # the shipped model's accuracy is not claimed
    # The model tab's card: what the file says, nothing about a training this app did not see.
    assert "- **Notes:** Weights from `ddp-resnet50.pt`" in text
    assert "- **Data set:** unknown (these weights were not trained by this project)" in text
    assert "- **Test accuracy:** not measured" in text


def test_started_on_other_weights_it_answers_with_them(other_client, theirs: Path) -> None:
    from gradio_client import handle_file

    answer = other_client.predict(handle_file(str(CAT)), api_name="/classify")
    same_top5(answer, probs_of(load_checkpoint(theirs).model, CAT))


def test_started_on_other_weights_the_training_views_are_not_available(other_client) -> None:
    summary, plot = other_client.predict(api_name="/training_curves")
    assert summary.startswith("**Training curves not available for these weights.**") and plot is None
    missing, *_ = other_client.predict(False, api_name="/test_set")
    assert "not trained by this project" in missing and "--evaluation DIR" in missing
    calibration, *_ = other_client.predict(api_name="/calibration")
    assert calibration.startswith("**Calibration is not available.**") and "not trained by this project" in calibration


def test_the_compare_endpoint_and_a_refusal_through_the_api(other_client, other_app, theirs: Path, tmp_path: Path) -> None:
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from resnet.weights import load_pretrained

    # The app runs on `theirs`; the upload is the shipped model.
    note, app_top, your_top, app_cams, your_cams, plot, raw = other_client.predict(
        handle_file(str(CAT)), handle_file(str(SHIPPED)), "cat", api_name="/compare")
    shipped, _ = load_pretrained()
    same_top5(app_top, probs_of(load_checkpoint(theirs).model, CAT))
    same_top5(your_top, probs_of(shipped, CAT))
    raw = raw if isinstance(raw, dict) else json.loads(raw)
    assert len(app_cams) == len(your_cams) == 4 and raw["target"] == "cat"
    assert [c["caption"].split(" ")[0] for c in your_cams] == ["layer1", "layer2", "layer3", "layer4"]
    assert WEIGHTS_FILE in note and "app's model (ddp-resnet50.pt)" in raw["models"]

    whole_model = tmp_path / "whole-model.pt"
    torch.save(torch.nn.Linear(2, 2), whole_model)
    with pytest.raises(AppError, match="whole-model.pt is a pickle that needs code to load"):
        other_client.predict(handle_file(str(CAT)), handle_file(str(whole_model)), "cat", api_name="/compare")
    uploads = other_app[1]
    assert not list(uploads.rglob("whole-model.pt"))  # the refused file is gone from the server
    assert list(uploads.rglob(WEIGHTS_FILE))  # the one in use stays until the session ends
    # The session still compares with the model it had.
    ship = SAMPLES / "ship_0.png"
    *_, your_top, _, _, _, _ = other_client.predict(handle_file(str(ship)), None, "ship", api_name="/compare")
    same_top5(your_top, probs_of(shipped, ship))


def test_weights_that_do_not_load_stop_the_start_up_with_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "empty.pt").write_bytes(b"")
    done = subprocess.run([sys.executable, "app.py", "--weights", str(tmp_path / "empty.pt")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == "Cannot start the explorer: empty.pt is empty (0 bytes)."
