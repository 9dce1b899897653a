"""The tree shows the architecture: imports flow downward only.

    app -> explorer -> insight -> resnet,    train -> insight / resnet

Read from the source with ``ast`` (nothing is imported), so a forbidden import
fails here even when it sits inside a function that no other test calls.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("resnet", "insight", "explorer", "train")

# What each package may import besides the standard library and itself.
ALLOWED: dict[str, set[str]] = {
    # The network and what defines it. numpy and Pillow decode an upload into
    # the model's input (preprocess.py); torch installs numpy anyway.
    "resnet": {"torch", "safetensors", "numpy", "PIL"},
    # Pure functions over a model and arrays.
    "insight": {"resnet", "torch", "numpy", "captum", "PIL"},
    # The Gradio app.
    "explorer": {"insight", "resnet", "gradio", "plotly", "numpy", "PIL", "torch", "safetensors"},
    # Training runs on a bare GPU box: see test_train_imports_only_what_a_gpu_box_has.
    "train": {"insight", "resnet", "torch", "torchvision", "numpy", "PIL", "safetensors", "tqdm", "captum",
              "huggingface_hub"},
}
NEVER: dict[str, set[str]] = {
    "resnet": {"insight", "explorer", "train", "gradio", "plotly", "captum"},
    "insight": {"explorer", "train", "gradio", "plotly"},
    "train": {"explorer", "gradio", "plotly"},
    "explorer": {"train"},
}


def imports_of(path: Path, package: str) -> set[str]:
    """Top-level names of everything ``path`` imports, relative imports resolved."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add(package if node.level else (node.module or "").split(".")[0])
    return found - {"__future__"}


def third_party(names: set[str]) -> set[str]:
    return {n for n in names if n not in sys.stdlib_module_names}


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_from_the_layers_below_it(package: str) -> None:
    for path in sorted((ROOT / package).rglob("*.py")):
        names = third_party(imports_of(path, package)) - {package}
        where = path.relative_to(ROOT)
        assert not names & NEVER[package], f"{where} imports {sorted(names & NEVER[package])}"
        assert names <= ALLOWED[package], f"{where} imports {sorted(names - ALLOWED[package])}, not allowed in {package}/"


def test_the_entry_point_only_builds_and_launches_the_explorer() -> None:
    assert third_party(imports_of(ROOT / "app.py", "app")) == {"explorer"}


def test_the_checker_sees_relative_and_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from . import x\n\ndef f():\n    import gradio\n    from plotly.graph_objects import Figure\n")
    assert imports_of(module, "insight") == {"insight", "gradio", "plotly"}


def test_every_package_says_what_belongs_in_it() -> None:
    for package in (*PACKAGES, "explorer/tabs"):
        doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
        assert doc and len(doc.split()) >= 15, f"{package}/__init__.py needs a docstring saying what belongs in it"
