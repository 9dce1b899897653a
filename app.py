"""ResNet-50 on CIFAR-10, explained: the Space's entry point.

``python app.py`` serves the explorer on http://127.0.0.1:7860 (honours
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT); the same file is a Hugging Face
Space's ``app_file``. ``python app.py --weights PATH [--evaluation DIR]``
explores a ResNet-50 trained elsewhere (a Space sets EXPLORER_WEIGHTS /
EXPLORER_EVALUATION instead). Everything else lives in the ``explorer`` package.
"""

from explorer import build_demo, main

if __name__ == "__main__":
    main()
else:  # imported (e.g. by `gradio app.py`): the page, as a module-level `demo`
    demo = build_demo()
