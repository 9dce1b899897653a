"""Shipped weights are float16 safetensors, loaded as float32, never unpickled, with clear errors;
checkpoints trained elsewhere load from safetensors or torch.save state dicts, or are refused in one sentence."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from pathlib import Path

import pytest
import torch

from resnet import WeightsError, load_pretrained, resnet50, save_weights
from resnet.weights import (
    ASSETS_DIR,
    CARD_FILE,
    MAX_CHECKPOINT_BYTES,
    WEIGHTS_FILE,
    Checkpoint,
    check_resnet50_state,
    checkpoint_from,
    data_contract,
    load_checkpoint,
)

# One intra-op thread: on the shared 2-core machine two threads per process spin-wait on each other.
pytestmark = pytest.mark.usefixtures("single_torch_thread")


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


# ----- checkpoints trained elsewhere (load_checkpoint) ------------------------------------------
#
# Each full ResNet-50 file is 47 MB in float16 (94 MB in float32), so only the round trips the
# issue names are written to disk, once each, and deleted after their test; prefixes and refusals
# that only need the tensors go through ``checkpoint_from`` / ``check_resnet50_state`` in memory.

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def torchvision_resnet50(stem: str = "cifar") -> torch.nn.Module:
    """torchvision's own ResNet-50 for 10 classes, random weights with random BN statistics, eval mode."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=10)
    if stem == "cifar":
        model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = torch.nn.Identity()
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=g) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
            m.running_mean = torch.randn(m.running_mean.shape, generator=g) * 0.1
            m.running_var = torch.rand(m.running_var.shape, generator=g) + 0.5
    return model.eval()


@pytest.fixture(scope="module")
def tv_cifar() -> torch.nn.Module:
    return torchvision_resnet50("cifar")


@pytest.fixture()
def scratch(tmp_path: Path):
    """A tmp folder whose (large) files are removed after the test, not kept by pytest's last-3 runs."""
    yield tmp_path
    for f in tmp_path.iterdir():
        if f.is_file():
            f.unlink()


def logits(model: torch.nn.Module, x: torch.Tensor = X) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def rounded(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}


def same_model(loaded: Checkpoint, reference: torch.nn.Module) -> None:
    """The loaded model computes what the reference computes, with the stored precision."""
    expected, got = logits(reference), logits(loaded.model)
    assert not loaded.model.training
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def one_sentence(message: str) -> str:
    assert message.endswith(".") and ". " not in message and "\n" not in message, message
    return message


def test_our_shipped_weights_load_as_a_checkpoint_too() -> None:
    shipped, _ = load_pretrained()
    loaded = load_checkpoint(ASSETS_DIR / WEIGHTS_FILE)
    same_model(loaded, shipped)
    assert (loaded.format, loaded.stem, loaded.dtypes, loaded.prefix, loaded.wrapper) == (
        "safetensors", "cifar", ("float16",), "", None)
    assert loaded.name in loaded.describe() and "float16" in loaded.describe()


def test_torchvision_cifar_resnet50_saved_by_torch_save_round_trips(tv_cifar, scratch: Path) -> None:
    torch.save(tv_cifar.state_dict(), scratch / "tv.pt")
    loaded = load_checkpoint(scratch / "tv.pt")
    assert (loaded.format, loaded.stem, loaded.dtypes) == ("torch.save", "cifar", ("float32",))
    same_model(loaded, tv_cifar)
    assert loaded.sha256 == hashlib.sha256((scratch / "tv.pt").read_bytes()).hexdigest()


def test_torchvision_cifar_resnet50_saved_as_float16_safetensors_round_trips(tv_cifar, scratch: Path) -> None:
    from safetensors.torch import save_file

    state = rounded(tv_cifar.state_dict(), torch.float16)
    save_file(state, str(scratch / "tv.safetensors"))
    loaded = load_checkpoint(scratch / "tv.safetensors")
    assert (loaded.format, loaded.stem, loaded.dtypes) == ("safetensors", "cifar", ("float16",))
    tv_cifar_f16 = torchvision_resnet50("cifar")
    tv_cifar_f16.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    same_model(loaded, tv_cifar_f16)
    assert torch.equal(logits(loaded.model).argmax(1), logits(tv_cifar).argmax(1))


def test_a_ddp_checkpoint_in_bfloat16_under_state_dict_round_trips(tv_cifar, scratch: Path) -> None:
    state = rounded(tv_cifar.state_dict(), torch.bfloat16)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 30, "best_acc": 0.95},
               scratch / "ddp.ckpt")
    loaded = load_checkpoint(scratch / "ddp.ckpt")
    assert (loaded.prefix, loaded.wrapper, loaded.dtypes) == ("module.", "state_dict", ("bfloat16",))
    assert "prefix `module.` removed" in loaded.describe()
    reference = torchvision_resnet50("cifar")
    reference.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    same_model(loaded, reference)


def test_an_imagenet_stem_checkpoint_is_detected_and_round_trips(scratch: Path) -> None:
    tv_imagenet = torchvision_resnet50("imagenet")
    torch.save(tv_imagenet.state_dict(), scratch / "imagenet-stem.pth")
    loaded = load_checkpoint(scratch / "imagenet-stem.pth")
    assert loaded.stem == "imagenet" and loaded.model.stem_kind == "imagenet"
    assert "imagenet stem" in loaded.describe()
    same_model(loaded, tv_imagenet)
    assert loaded.card()["architecture"]["stem"] == "imagenet"


@pytest.mark.parametrize(
    "wrap, prefix",
    [
        (lambda s: s, "_orig_mod."),  # torch.compile
        (lambda s: {"state_dict": s, "epoch": 3, "global_step": 100}, "model."),  # Lightning
        (lambda s: {"model": s, "optimizer": {"lr": 0.1}}, "module._orig_mod."),  # DDP of a compiled model
        (lambda s: {"model_state_dict": s}, ""),
    ],
    ids=["compile", "lightning", "ddp-compile", "model_state_dict"],
)
def test_common_prefixes_and_wrappers_are_removed(tv_cifar, wrap, prefix: str) -> None:
    state = {f"{prefix}{k}": v for k, v in tv_cifar.state_dict().items()}
    loaded = checkpoint_from(wrap(state), "in-memory")
    assert loaded.prefix == prefix
    same_model(loaded, tv_cifar)


def test_a_state_dict_without_batchnorm_counters_still_loads(tv_cifar) -> None:
    state = {k: v for k, v in tv_cifar.state_dict().items() if not k.endswith("num_batches_tracked")}
    same_model(checkpoint_from(state), tv_cifar)


# ----- refusals: one sentence each, naming the file ---------------------------------------------


def refused(path: Path, *phrases: str) -> str:
    with pytest.raises(WeightsError) as info:
        load_checkpoint(path)
    message = one_sentence(str(info.value))
    assert path.name in message
    for phrase in phrases:
        assert phrase in message, message
    return message


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.pt").write_bytes(b"")
    refused(tmp_path / "empty.pt", "is empty")


def test_a_file_over_200_mb_is_refused_before_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big.pt"
    with open(big, "wb") as f:
        f.truncate(MAX_CHECKPOINT_BYTES + 1)  # sparse: no disk is used
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("a file over the limit was read"))
    refused(big, "the limit is 200 MB")


def test_a_pickle_that_needs_code_is_refused_naming_the_code(tmp_path: Path) -> None:
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole-model.pt")
    refused(tmp_path / "whole-model.pt", "needs code", "torch.nn.modules.linear.Linear", "state_dict()")


class _Payload:
    """A pickle that would create a file when unpickled with code allowed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("container", ["torch.save", "plain pickle"])
def test_a_malicious_pickle_never_runs(tmp_path: Path, container: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if container == "torch.save":
        torch.save({"conv1.weight": torch.zeros(1), "payload": _Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps({"payload": _Payload(marker)}, protocol=2))
    assert not marker.exists()
    refused(path, "needs code")
    assert not marker.exists()


def test_a_resnet18_is_refused_at_the_first_key_that_differs(scratch: Path) -> None:
    import torchvision

    r18 = torchvision.models.resnet18(num_classes=10)
    r18.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    torch.save(rounded(r18.state_dict(), torch.float16), scratch / "resnet18.pt")
    refused(scratch / "resnet18.pt", "does not hold ResNet-50", "`layer1.0.conv1.weight` is 64x64x3x3", "64x64x1x1")


@pytest.mark.parametrize(
    "edit, phrases",
    [
        (lambda s: {"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}, ("no `conv1.weight`", "`weight`")),
        (lambda s: {**s, "conv1.weight": torch.zeros(64, 3, 5, 5)}, ("`conv1.weight` is 64x3x5x5",)),
        (lambda s: {k: v for k, v in s.items() if k != "layer3.2.bn2.running_var"}, ("no `layer3.2.bn2.running_var`",)),
        (lambda s: {**s, "layer3.6.conv1.weight": torch.zeros(256, 1024, 1, 1)}, ("`layer3.6.conv1.weight`", "deeper")),
        (lambda s: {**s, "fc.weight": torch.zeros(100, 2048), "fc.bias": torch.zeros(100)}, ("100 output classes", "10 CIFAR-10")),
        (lambda s: {**s, "layer2.0.conv2.weight": s["layer2.0.conv2.weight"].to(torch.int8)}, ("int8",)),
    ],
    ids=["not-a-resnet", "other-stem", "missing-key", "resnet101-like", "100-classes", "integer-weights"],
)
def test_wrong_architecture_classes_or_dtype_are_refused_saying_what_differs(tv_cifar, edit, phrases) -> None:
    with pytest.raises(WeightsError) as info:
        check_resnet50_state(edit(dict(tv_cifar.state_dict())), "mine.pt")
    message = one_sentence(str(info.value))
    assert message.startswith("mine.pt ")
    for phrase in phrases:
        assert phrase in message, message


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nan_or_inf_weights_are_refused(tv_cifar, bad: float) -> None:
    state = dict(tv_cifar.state_dict())
    state["layer4.1.conv2.weight"] = state["layer4.1.conv2.weight"].clone()
    state["layer4.1.conv2.weight"][0, 0, 0, 0] = bad
    with pytest.raises(WeightsError, match="NaN or infinite values \\(first in `layer4.1.conv2.weight`\\)") as info:
        checkpoint_from(state, "mine.pt")
    one_sentence(str(info.value))


def test_truncated_files_are_refused(scratch: Path) -> None:
    shipped = (ASSETS_DIR / WEIGHTS_FILE).read_bytes()
    (scratch / "half.safetensors").write_bytes(shipped[: len(shipped) // 2])
    refused(scratch / "half.safetensors", "is truncated")
    for legacy in (False, True):
        buffer = io.BytesIO()
        torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3)}, buffer, _use_new_zipfile_serialization=not legacy)
        data = buffer.getvalue()
        (scratch / "cut.pt").write_bytes(data[: len(data) // 2])
        refused(scratch / "cut.pt", "truncated")


@pytest.mark.parametrize(
    "content, phrase",
    [
        (b"just some text, not weights\n", "neither a safetensors file nor a torch.save checkpoint"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n", "Git LFS pointer"),
    ],
    ids=["text", "lfs-pointer"],
)
def test_files_that_are_no_checkpoint_at_all_are_refused(tmp_path: Path, content: bytes, phrase: str) -> None:
    (tmp_path / "x.safetensors").write_bytes(content)
    refused(tmp_path / "x.safetensors", phrase)


def test_a_checkpoint_of_no_tensors_is_refused(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "meta.pt")
    refused(tmp_path / "meta.pt", "not a state dict of tensors", "'epoch'")
