"""The pieces of the page every view wires into: the upload component and the shared components."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import gradio as gr


class UploadImage(gr.Image):
    """gr.Image that passes the uploaded file's path on untouched.

    gr.Image's own preprocessing opens every upload with PIL and fails with a
    bare error on a non-image; ours hands the path to ``preprocess.load_image``,
    which checks bytes and header before any pixel is decoded and says what is
    wrong in a sentence. ``is_template`` keeps the stock Image front end.
    """

    is_template = True

    def preprocess(self, payload: Any) -> str | None:
        if payload is None:
            return None
        if getattr(payload, "path", None):
            return str(payload.path)
        return super().preprocess(payload)  # base64 data URL (webcam streaming)


@dataclass
class Ctx:
    """What tab builders share: the input image, the component that changes
    once per analysed image (hook follow-up work onto ``analysed.change``) and
    the id of the tab on screen (so a follow-up can skip a hidden tab)."""

    image: gr.Image
    analysed: gr.Image  # the 32x32 image the model saw; changes after each analysis
    open_tab: gr.State  # id of the tab on screen: follow-ups skip work for hidden tabs
    controls: dict[str, gr.components.Component] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)


def opened(tab_id: str) -> Callable[[], str]:
    """Event handler that records which tab is open (for follow-ups of a new image)."""

    def remember() -> str:
        return tab_id

    return remember
