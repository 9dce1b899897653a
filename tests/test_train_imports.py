"""The path through `python -m train` and `python -m train.evaluate` runs on a bare GPU box.

That box has python3, torch, torchvision, numpy, pillow, safetensors and tqdm,
and nothing else of ours: no gradio, plotly or huggingface_hub, and no
matplotlib, so no captum either (captum imports matplotlib). Two checks:
statically, every import (lazy ones inside functions too) of every module the
run can reach, followed through our own packages; and dynamically, a real tiny
run through training, export and evaluation in a fresh interpreter, listing
what it loaded beyond torch's own imports.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = {"train", "resnet", "insight"}
ON_THE_GPU_BOX = {"torch", "torchvision", "numpy", "PIL", "safetensors", "tqdm"}
GPU_BOX_DISTRIBUTIONS = ("torch", "torchvision", "numpy", "pillow", "safetensors", "tqdm")
NEVER = {"gradio", "plotly", "captum", "matplotlib", "huggingface_hub", "pandas", "scipy", "explorer"}
NOT_ON_THE_RUN_PATH = {"train/push_space.py"}  # the Space upload runs on a developer's machine


def module_file(name: str) -> Path | None:
    path = ROOT / Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_names(path: Path) -> set[str]:
    """Dotted names of everything ``path`` imports anywhere in it, relative imports resolved."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = f"{base}.{node.module}" if node.level and node.module else (base if node.level else node.module or "")
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names if module_file(f"{module}.{alias.name}")}
    return names


def reachable_imports(start: list[Path]) -> dict[str, set[str]]:
    """Third-party top-level name -> our files that import it, over everything reachable from ``start``."""
    seen: set[Path] = set()
    todo = list(start)
    found: dict[str, set[str]] = {}
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_names(path):
            top = name.split(".")[0]
            if top in OURS:
                parts = name.split(".")
                for i in range(1, len(parts) + 1):  # a package's __init__ runs before its module
                    if (file := module_file(".".join(parts[:i]))) is not None:
                        todo.append(file)
            elif top not in sys.stdlib_module_names and top != "__future__":
                found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_import_the_run_can_reach_is_on_a_bare_gpu_box() -> None:
    run_path = [p for p in sorted((ROOT / "train").glob("*.py")) if str(p.relative_to(ROOT)) not in NOT_ON_THE_RUN_PATH]
    found = reachable_imports(run_path)
    extra = {name: sorted(files) for name, files in found.items() if name not in ON_THE_GPU_BOX}
    assert not extra, f"the training path imports what a bare GPU box lacks: {extra}"
    assert {"torch", "numpy", "PIL", "safetensors", "tqdm"} <= found.keys(), "the checker must see the real imports"


def test_the_checker_follows_our_packages_and_sees_lazy_imports() -> None:
    assert "captum" in reachable_imports([ROOT / "insight" / "captum_reference.py"]), "it imports captum in a function"
    found = reachable_imports([ROOT / "explorer" / "context.py"])
    assert "gradio" in found or "plotly" in found or "captum" in found


DRIVER = """
import json, runpy, sys
import torch, torch.nn, torch.optim  # what torch loads on its own is torch's business
baseline = set(sys.modules)
module, argv = sys.argv[1], sys.argv[2:]
sys.argv = [module] + argv
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("LOADED=" + json.dumps(sorted({m.split(".")[0] for m in set(sys.modules) - baseline})))
sys.exit(code)
"""


def brought_along(distributions: tuple[str, ...]) -> set[str]:
    """Top-level modules of these distributions and of everything they require (markers ignored, extras not)."""
    todo, seen = [d.lower() for d in distributions], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0].lower() for r in requires if "extra ==" not in r]
    normal = {d.replace("_", "-") for d in seen}
    return {m for m, dists in metadata.packages_distributions().items()
            if any(d.lower().replace("_", "-") in normal for d in dists)}


def loaded_by(module: str, *args: str) -> set[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", DRIVER, module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    line = next(row for row in proc.stdout.splitlines() if row.startswith("LOADED="))
    return {m for m in json.loads(line.removeprefix("LOADED=")) if m not in sys.stdlib_module_names and not m.startswith("_")}


def test_a_real_run_train_export_evaluate_loads_only_what_a_gpu_box_has(tiny_cifar, tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    trained = loaded_by(
        "train", "--data", str(tiny_cifar.archive), "--out", str(tmp_path / "run"), "--export-to", str(assets),
        "--device", "cpu", "--epochs", "1", "--batch-size", "10", "--min-res", "8", "--res-ramp-start", "0.5",
        "--res-ramp-end", "1.0", "--eval-batch-size", "30", "--bn-recalibration", "20", "--lesion-images", "4",
    )
    assert (assets / "model_card.json").is_file(), "the run must get as far as the export"
    evaluated = loaded_by("train.evaluate", "--weights", str(assets / "resnet50_cifar10.safetensors"),
                          "--data", str(tiny_cifar.archive), "--out", str(tmp_path / "eval"), "--device", "cpu")
    # torch loads sympy, triton and the like on its own; what comes with the six packages is on the box too.
    allowed = ON_THE_GPU_BOX | brought_along(GPU_BOX_DISTRIBUTIONS)
    assert not allowed & NEVER
    for loaded in (trained, evaluated):
        assert not loaded & NEVER, sorted(loaded & NEVER)
        assert loaded - OURS <= allowed, sorted(loaded - OURS - allowed)
    assert {"safetensors", "PIL", "train", "resnet"} <= trained, "the driver must see what the run loads"
