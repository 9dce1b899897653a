"""The Gradio explorer: one module per view, wired into one page.

``context`` loads the model and assets once and holds the helpers every view
shares; ``cache`` keeps recent images' analyses; ``ui`` the upload component
and the shared components (``Ctx``, with the one follow-up event every tab
joins); ``plots`` the plotting helpers; ``camstrip`` the Grad-CAM overlays the browser draws
from every class's maps; ``classify`` the panel on top and the
analysis of a new image; ``tabs/`` one module per tab, each with its layout,
handlers and figures (``tabs.TABS`` lists them in page order); ``layout``
builds the page and launches the server.

Adding a view: write ``tabs/<name>.py`` with a ``build(ctx)`` and add it to
``tabs.TABS``. Handlers are pure glue from components to ``insight`` functions;
every event gets an ``api_name``. Depends on gradio, plotly, ``insight`` and
``resnet``; never on ``train``.

Importing this package loads nothing: the model is loaded by the first of
``build_demo`` / ``main``, after ``main`` has read the command line.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from typing import Any


def build_demo() -> Any:
    """The page (a ``gr.Blocks``), with the model and assets loaded.

    Python's cyclic garbage collector is off meanwhile: importing torch and gradio
    and building the page make millions of objects and no garbage cycles worth a
    collection, and each full collection rescans all of them (0.8 s of a 2-core
    start). What exists once the page is built is then frozen out of later scans
    (``gc.freeze``): it lives as long as the server, and requests no longer pay to
    rescan it either.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        from .layout import build_demo as build

        return build()
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def launch(demo: Any) -> None:
    from .layout import launch as serve

    serve(demo)


def main(argv: list[str] | None = None) -> None:
    """``python app.py [--weights PATH] [--evaluation DIR]``: serve the explorer."""
    parser = argparse.ArgumentParser(prog="python app.py", description="Serve the ResNet-50 explorer.")
    parser.add_argument("--weights", metavar="PATH",
                        help="explore these weights (safetensors or torch.save state dict of a CIFAR-10 ResNet-50)")
    parser.add_argument("--evaluation", metavar="DIR",
                        help="evaluation.json and test_gallery.npz made for --weights (python -m train.evaluate --out DIR)")
    args = parser.parse_args(argv)
    # The explorer reads these when it loads its model; a Space sets them instead of flags.
    if args.weights:
        os.environ["EXPLORER_WEIGHTS"] = os.path.abspath(args.weights)
    if args.evaluation:
        os.environ["EXPLORER_EVALUATION"] = os.path.abspath(args.evaluation)
    from resnet.weights import WeightsError

    try:
        demo = build_demo()
    except WeightsError as exc:  # weights that do not load: one sentence, no traceback
        sys.exit(f"Cannot start the explorer: {exc}")
    launch(demo)


__all__ = ["build_demo", "launch", "main"]
