"""ResNet-50 on CIFAR-10, explained: the Space's entry point.

``python app.py`` serves the explorer on http://127.0.0.1:7860 (honours
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT); the same file is a Hugging Face
Space's ``app_file``. ``python app.py --weights PATH`` explores a ResNet-50
trained elsewhere instead (safetensors or a torch.save state dict), and
``--evaluation DIR`` adds its test-set evaluation; a Space sets
EXPLORER_WEIGHTS / EXPLORER_EVALUATION for the same. Everything else lives in
the ``explorer`` package.
"""

import argparse
import os
import sys


def options_to_environment(argv: list[str] | None = None) -> None:
    """--weights / --evaluation become the variables the explorer reads when it loads its model."""
    parser = argparse.ArgumentParser(prog="python app.py", description="Serve the ResNet-50 explorer.")
    parser.add_argument("--weights", metavar="PATH",
                        help="explore these weights (safetensors or torch.save state dict of a CIFAR-10 ResNet-50)")
    parser.add_argument("--evaluation", metavar="DIR",
                        help="evaluation.json and test_gallery.npz made for --weights (python -m train.evaluate --out DIR)")
    args = parser.parse_args(argv)
    if args.weights:
        os.environ["EXPLORER_WEIGHTS"] = os.path.abspath(args.weights)
    if args.evaluation:
        os.environ["EXPLORER_EVALUATION"] = os.path.abspath(args.evaluation)


if __name__ == "__main__":
    options_to_environment()
    try:
        from explorer import build_demo, launch
    except RuntimeError as exc:
        # resnet.weights.WeightsError (this file imports only explorer): weights that do not load.
        if type(exc).__name__ != "WeightsError":
            raise
        sys.exit(f"Cannot start the explorer: {exc}")
    demo = build_demo()
    launch(demo)
else:
    from explorer import build_demo

    demo = build_demo()
