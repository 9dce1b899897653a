"""Training on the CPU: bf16 where the cores have bf16 units, the cpu preset, a held-out slice for
choosing recipes, warm restarts that continue the shipped lineage, and an export that keeps
better weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from insight.replay import REPLAY_FILE, load_replay
from resnet.weights import WEIGHTS_FILE, WeightsError
from train import TrainConfig, fit, hardware, load_cifar10
from train import export as export_module
from train.config import PRESETS, build_parser, config_from_args
from train.export import NotBetter, export_run
from train.trainer import Dist, Run, resolution_at

XEON = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu sse avx512f avx512_bf16 amx_bf16 amx_tile\n"
EPYC = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse avx2 avx512f\n"


@pytest.fixture(scope="module", autouse=True)
def _one_thread(single_torch_thread):
    """The tiny runs on one thread, as in tests/test_train.py."""


@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """Pretend to be a CPU described by the /proc/cpuinfo text given."""

    def use(text: str) -> None:
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        monkeypatch.setattr(hardware, "CPUINFO", path)
        hardware._cpuinfo.cache_clear()

    yield use
    hardware._cpuinfo.cache_clear()


@pytest.fixture(scope="module")
def tiny_data(tiny_cifar):
    return load_cifar10(tiny_cifar.archive)


def tiny_config(tiny_cifar, out: Path, **overrides) -> TrainConfig:
    values = dict(data=str(tiny_cifar.archive), out=str(out), epochs=1, batch_size=10, min_res=8, res_ramp_start=0.5,
                  res_ramp_end=1.0, eval_batch_size=30, replay=False, device="cpu",
                  lesion_images=4)
    values.update(overrides)
    return TrainConfig(**values)


# ----- bf16 on the CPU ------------------------------------------------------------------------


def test_bf16_is_used_where_the_cpu_has_amx_or_avx512_bf16_and_float32_elsewhere(cpuinfo):
    cpu = torch.device("cpu")
    cpuinfo(XEON)
    assert hardware.cpu_bf16_units() == ("amx_bf16", "avx512_bf16") and hardware.bf16_pays(cpu)
    assert hardware.cpu_model() == "Intel(R) Xeon(R) Processor"
    assert hardware.precision_name("bfloat16", cpu) == "bf16 autocast (amx_bf16, avx512_bf16)"
    assert hardware.precision_name("none", cpu) == "float32"
    cpuinfo(EPYC)
    assert hardware.cpu_bf16_units() == () and not hardware.bf16_pays(cpu)
    assert hardware.precision_name("bfloat16", cpu).startswith("float32 (this CPU has no bf16 units")


def test_the_plan_line_names_the_precision_and_how_long_the_run_takes_here(tiny_cifar, tiny_data, tmp_path, cpuinfo):
    for text, amp, precision in ((XEON, "bfloat16", "bf16 autocast"), (EPYC, "bfloat16", "float32 (this CPU"),
                                 (XEON, "none", "float32")):
        cpuinfo(text)
        run = Run(tiny_config(tiny_cifar, tmp_path, amp=amp), tiny_data, Dist(),
                  torch.device("cpu"))
        assert run.use_amp == (precision == "bf16 autocast")
        plan = run.plan()
        assert f" in {precision}" in plan and "expected here ~" in plan and "min of training" in plan, plan
        assert plan.count(precision) == 1, plan  # named once, not again beside the estimate


def _one_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)
    loss = nn.functional.cross_entropy(logits.float(), y)
    assert loss.dtype == torch.float32
    loss.backward()
    optimizer.step()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for group in optimizer.state.values():
        assert group["momentum_buffer"].dtype == torch.float32, "optimizer state stays float32"
    return state


def test_a_bf16_cpu_step_stays_close_to_the_float32_step():
    torch.manual_seed(0)
    tiny = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    start = {k: v.clone() for k, v in tiny.state_dict().items()}
    x, y = torch.randn(32, 3, 16, 16), torch.randint(0, 10, (32,))
    full = _one_step(tiny, x, y, bf16=False)
    tiny.load_state_dict(start)
    half = _one_step(tiny, x, y, bf16=True)
    for name, value in half.items():
        assert value.dtype == start[name].dtype, f"{name} is kept in {start[name].dtype}"
        if not value.is_floating_point():
            continue
        a, b = full[name] - start[name], value - start[name]  # the step each precision took
        if a.norm() == 0:
            continue
        cosine = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
        assert cosine > 0.99, f"{name}: the bf16 step points elsewhere (cosine {cosine:.4f})"
        assert (a - b).norm() / a.norm() < 0.1, f"{name}: the bf16 step differs by {(a - b).norm() / a.norm():.2%}"


# ----- the cpu preset -------------------------------------------------------------------------


def test_the_cpu_preset_sets_its_values_and_flags_beside_it_win():
    cfg = config_from_args(["--preset", "cpu", "--epochs", "2", "--out", "somewhere"])
    for name, (value, why) in PRESETS["cpu"].items():
        assert why, f"{name} needs its reason"
        if name != "epochs":
            assert getattr(cfg, name) == value, name
    assert cfg.epochs == 2 and cfg.out == "somewhere" and cfg.preset == "cpu"
    assert config_from_args([]).epochs == 80, "without a preset the defaults stay the GPU recipe's"
    help_text = build_parser().format_help()
    assert "the cpu preset (--preset cpu)" in help_text and "2.7x the float32 step" in help_text


def test_the_cpu_preset_ends_at_full_resolution():
    cfg = config_from_args(["--preset", "cpu"])
    total = 1000
    resolutions = [resolution_at(s, total, cfg) for s in range(total)]
    assert resolutions[0] == 16 and resolutions[-1] == 32
    assert resolutions.count(32) == 200 and 24 in resolutions


# ----- a held-out slice for choosing recipes -------------------------------------------------


def test_a_holdout_run_never_trains_on_its_held_out_images_and_evaluates_on_them(tiny_cifar, tiny_data, tmp_path):
    run = Run(tiny_config(tiny_cifar, tmp_path, holdout=10), tiny_data, Dist(),
              torch.device("cpu"))
    assert run.n_train == len(tiny_data.train) - 10 and len(run.test_y) == 10
    held = {bytes(img) for img in run.test_x.numpy()}
    assert not held & {bytes(img) for img in run.train_x.numpy()}, "a held-out image is trained on"
    assert held <= {bytes(img) for img in tiny_data.train.images}, "the held-out images come from the training split"
    assert "10 held-out training images" in run.plan()
    again = Run(tiny_config(tiny_cifar, tmp_path, holdout=10, seed=3), tiny_data, Dist(),
                torch.device("cpu"))
    assert torch.equal(again.test_x, run.test_x), "every run holds out the same images"

    result = fit(tiny_config(tiny_cifar, tmp_path / "run", holdout=10, batch_size=10), data=tiny_data,
                 show_progress=False)
    (row,) = result.history
    assert row["evaluated_on"] == "holdout" and row["test_images"] == 10 and row["train_images"] == 30


# ----- warm restarts --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def first_run(tiny_cifar, tiny_data, tmp_path_factory):
    base = tmp_path_factory.mktemp("lineage")
    fit(tiny_config(tiny_cifar, base / "run1", replay=True, export_to=str(base / "assets")), data=tiny_data,
        show_progress=False)
    return base


def test_a_warm_restart_starts_from_the_weights_and_continues_history_replay_and_runs(tiny_cifar, tiny_data,
                                                                                      first_run):
    assets = first_run / "assets"
    before_card = json.loads((assets / "model_card.json").read_text())
    cfg = tiny_config(tiny_cifar, first_run / "run2", replay=True, epochs=2, lr=0.05,
                      init_from=str(assets / WEIGHTS_FILE), export_to=str(assets), force_export=True)
    run = Run(cfg, tiny_data, Dist(), torch.device("cpu"))
    shipped = export_module.load_model(assets / WEIGHTS_FILE).state_dict()
    assert all(torch.equal(run.model.state_dict()[k].float(), shipped[k]) for k in shipped), "starts from the weights"
    assert "warm restart 2" in run.plan()

    fit(cfg, data=tiny_data, show_progress=False)
    history = json.loads((assets / "history.json").read_text())["epochs"]
    assert [(h["epoch"], h["run"]) for h in history] == [(1, 1), (2, 2), (3, 2)], "epochs numbered on"
    assert history[2]["images_seen"] == history[0]["images_seen"] + 2 * history[0]["images_seen"]
    replay = load_replay(assets / REPLAY_FILE)
    assert replay.eval_epoch.tolist() == [1, 2, 3]
    steps = replay.step.tolist()
    assert steps == sorted(steps) and steps[-1] == 3 * 4, "the replay's time axis goes on from the first run"
    card = json.loads((assets / "model_card.json").read_text())
    assert [r["run"] for r in card["runs"]] == [1, 2]
    assert card["runs"][0]["test_accuracy"] == before_card["test_accuracy"]
    second = card["runs"][1]
    assert second["epochs"] == 2 and second["first_epoch"] == 2 and second["init_from_sha256"]
    assert second["processor"] and second["precision"] and second["threads"] == 1
    assert second["training_seconds"] > 0 and second["images_per_second"] > 0
    assert second["test_accuracy"] == card["test_accuracy"] and card["epochs"] == 3
    assert "Warm restart 2" in card["notes"]
    assert "init_from" not in card["config"], "no path of the training machine ships"


def test_a_warm_restart_from_weights_without_their_files_starts_a_new_lineage(tiny_cifar, tiny_data, first_run,
                                                                              tmp_path):
    alone = tmp_path / WEIGHTS_FILE
    alone.write_bytes((first_run / "assets" / WEIGHTS_FILE).read_bytes())
    run = Run(tiny_config(tiny_cifar, tmp_path / "run", init_from=str(alone)), tiny_data,
              Dist(), torch.device("cpu"))
    assert run.lineage.run_number == 1 and run.lineage.history == [] and run.lineage.init_from_sha256
    assert any("no earlier runs continued" in note for note in run.lineage.notes)


def test_a_warm_restart_from_a_missing_file_is_a_clear_error(tiny_cifar, tiny_data, tmp_path):
    with pytest.raises(WeightsError, match="No weights file"):
        Run(tiny_config(tiny_cifar, tmp_path, init_from=str(tmp_path / "none.safetensors")), tiny_data,
            Dist(), torch.device("cpu"))


# ----- the export keeps better weights --------------------------------------------------------


def test_the_export_keeps_weights_that_score_higher_unless_forced(tiny_cifar, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    fit(tiny_config(tiny_cifar, out), data=tiny_data, show_progress=False)
    assets = tmp_path / "assets"
    export_run(out, assets, data=tiny_data, device="cpu", show_progress=False)
    # The same weights again score the same: that is not worse, so they export.
    export_run(out, assets, data=tiny_data, device="cpu", show_progress=False)

    def files() -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in assets.iterdir() if p.is_file()}

    before = files()
    monkeypatch.setattr(export_module, "shipped_accuracy", lambda *a, **k: 1.01)  # shipped weights that beat any
    with pytest.raises(NotBetter, match=r"below the 101.00% of the weights already in .*--force-export"):
        export_run(out, assets, data=tiny_data, device="cpu", show_progress=False)
    assert files() == before, "assets/ stays as it was"
    card = export_run(out, assets, data=tiny_data, device="cpu", show_progress=False, force=True)
    assert card["test_accuracy"] == json.loads((assets / "model_card.json").read_text())["test_accuracy"]


def test_the_shipped_weights_are_scored_by_the_same_evaluation(tiny_cifar, tiny_data, tmp_path):
    out = tmp_path / "run"
    fit(tiny_config(tiny_cifar, out), data=tiny_data, show_progress=False)
    assets = tmp_path / "assets"
    card = export_run(out, assets, data=tiny_data, device="cpu", show_progress=False)
    again = export_module.shipped_accuracy(assets, tiny_data, torch.device("cpu"), 30, False)
    assert again == card["test_accuracy"]
    assert export_module.shipped_accuracy(tmp_path / "nothing", tiny_data, torch.device("cpu"), 30, False) is None
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / WEIGHTS_FILE).write_bytes(b"not weights")
    assert export_module.shipped_accuracy(tmp_path / "broken", tiny_data, torch.device("cpu"), 30, False) is None
