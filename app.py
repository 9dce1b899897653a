"""ResNet-50 on CIFAR-10, explained: the Space's entry point.

``python app.py`` serves the explorer on http://127.0.0.1:7860 (honours
GRADIO_SERVER_NAME / GRADIO_SERVER_PORT); the same file is a Hugging Face
Space's ``app_file``. Everything else lives in the ``explorer`` package.
"""

from explorer import build_demo, launch

demo = build_demo()

if __name__ == "__main__":
    launch(demo)
