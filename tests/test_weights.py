"""Shipped weights are float16 safetensors, loaded as float32, never unpickled, with clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from resnet import WeightsError, load_pretrained, resnet50, save_weights
from resnet.weights import CARD_FILE, WEIGHTS_FILE, data_contract


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = resnet50(zero_init_residual=False).eval()
    save_weights(model, tmp_path / WEIGHTS_FILE, metadata={"note": "test"})
    card = {"architecture": {"name": "ResNet-50", "stem": "cifar"}, **data_contract(), "test_accuracy": 0.5}
    (tmp_path / CARD_FILE).write_text(json.dumps(card))
    return tmp_path, model


def test_weights_are_stored_as_float16_safetensors(saved: tuple[Path, torch.nn.Module]) -> None:
    from safetensors import safe_open

    folder, model = saved
    path = folder / WEIGHTS_FILE
    with safe_open(str(path), framework="pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
        assert f.metadata() == {"note": "test"}
    assert torch.float16 in dtypes and torch.float32 not in dtypes
    n_params = sum(p.numel() for p in model.parameters())
    assert path.stat().st_size < n_params * 2.1  # about two bytes a parameter


def test_load_pretrained_from_folder_gives_float32_eval_model_and_card(saved: tuple[Path, torch.nn.Module]) -> None:
    folder, original = saved
    model, card = load_pretrained(folder)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert card["test_accuracy"] == 0.5 and card["classes"][3] == "cat"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = original(x)
        got = model(x)
    # float16 storage costs a little precision, never the prediction
    assert torch.equal(expected.argmax(1), got.argmax(1))
    torch.testing.assert_close(got, expected, rtol=0.02, atol=0.05)


def test_load_pretrained_accepts_the_file_path_too(saved: tuple[Path, torch.nn.Module]) -> None:
    folder, _ = saved
    model, card = load_pretrained(folder / WEIGHTS_FILE)
    assert card["architecture"]["stem"] == "cifar"


def test_missing_weights_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="python -m train"):
        load_pretrained(tmp_path)


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 100, b"not a safetensors file at all", b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n"],
    ids=["empty", "zeros", "text", "lfs-pointer"],
)
def test_corrupt_weights_give_a_clear_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / WEIGHTS_FILE).write_bytes(content)
    with pytest.raises(WeightsError, match=str(tmp_path / WEIGHTS_FILE)):
        load_pretrained(tmp_path)


def test_truncated_weights_give_a_clear_error(saved: tuple[Path, torch.nn.Module]) -> None:
    folder, _ = saved
    path = folder / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        load_pretrained(folder)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    save_weights(torch.nn.Linear(3, 2), tmp_path / WEIGHTS_FILE)
    with pytest.raises(WeightsError, match="does not hold ResNet-50"):
        load_pretrained(tmp_path)


def test_a_card_from_another_data_contract_is_refused(saved: tuple[Path, torch.nn.Module]) -> None:
    folder, _ = saved
    card = json.loads((folder / CARD_FILE).read_text())
    card["mean"] = [0.5, 0.5, 0.5]
    (folder / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(WeightsError, match="mean"):
        load_pretrained(folder)


def test_weights_are_never_unpickled(saved: tuple[Path, torch.nn.Module], monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    load_pretrained(saved[0])


def test_the_shipped_assets_load() -> None:
    model, card = load_pretrained()
    assert card["classes"] == data_contract()["classes"]
    assert card["architecture"]["parameters"] == sum(p.numel() for p in model.parameters())
