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


@dataclass(frozen=True)
class Follower:
    """What tab ``tab`` redoes for a new image while it is on screen: ``fn(image, *inputs) -> outputs``."""

    tab: str
    fn: Callable[..., Any]
    inputs: list[gr.components.Component]
    outputs: list[gr.components.Component]


@dataclass
class Ctx:
    """What tab builders share: the input image, the id of the tab on screen,
    the controls and outputs of the first analysis, and the followers: each
    tab's work for a new image, run together in ONE event after the analysis
    (``follow``), so a new image costs one more round trip, not one per tab."""

    image: gr.Image
    analysed: gr.Image  # the 32x32 image the model saw; changes after each analysis
    # Id of the tab on screen, filled in by the browser (OPEN_TAB_JS) for the follow-up event. Not
    # a gr.State: the server keeps a State's value itself and ignores what the browser sends for it.
    open_tab: gr.components.Component
    controls: dict[str, gr.components.Component] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    followers: list[Follower] = field(default_factory=list)

    def follow(self, tab: str, fn: Callable[..., Any], inputs: list, outputs: list) -> None:
        """Run ``fn(image, *inputs)`` into ``outputs`` after every new image's analysis while tab ``tab`` is on screen."""
        self.followers.append(Follower(tab, fn, list(inputs), list(outputs)))

    def follow_all(self, image: Any, open_tab: str, *values: Any) -> list[Any]:
        """The one event behind every follower: the tab on screen computes from its own inputs;
        every other tab's outputs are left as they are (``gr.skip``), neither computed nor cleared.

        Opening a tab draws it for the current image (each tab's select event). A hidden tab
        cleared here instead would race that drawing: this event, triggered while the tab was
        hidden, can end after the user opened it and its select had drawn it, and wipe it."""
        out: list[Any] = []
        start = 0
        for follower in self.followers:
            args = values[start : start + len(follower.inputs)]
            start += len(follower.inputs)
            if follower.tab != open_tab:
                out.extend(gr.skip() for _ in follower.outputs)
                continue
            result = follower.fn(image, *args)
            out.extend(result if len(follower.outputs) > 1 else [result])
        return out


TAB_ID_PREFIX = "tab-"  # a tab's panel is the element with id TAB_ID_PREFIX + its id
# Runs in the browser before the follow-up event: which tab is on screen, read from the page
# itself when the event fires. A record kept on the server by each tab's select event can be
# stale: while the tab bar lays itself out, Gradio sends a select for the first tab, which may
# be processed after the user's own.
OPEN_TAB_JS = f"""(image, open_tab, ...rest) => {{
  const shown = [...document.querySelectorAll('.tabitem[id^="{TAB_ID_PREFIX}"]')].find(e => e.offsetParent !== null);
  return [image, shown ? shown.id.slice({len(TAB_ID_PREFIX)}) : open_tab, ...rest];
}}"""
