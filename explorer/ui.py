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
    """What one tab redoes for a new image: ``fn(image, open_tab, *inputs) -> outputs``.

    ``fn`` computes only while its tab is on screen (``open_tab``) and otherwise
    clears its outputs, so nothing stale shows and no hidden view costs time.
    """

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
    open_tab: gr.State  # id of the tab on screen: followers skip work for hidden tabs
    controls: dict[str, gr.components.Component] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    followers: list[Follower] = field(default_factory=list)

    def follow(self, fn: Callable[..., Any], inputs: list, outputs: list) -> None:
        """Run ``fn(image, open_tab, *inputs)`` into ``outputs`` after every new image's analysis."""
        self.followers.append(Follower(fn, list(inputs), list(outputs)))

    def follow_all(self, image: Any, open_tab: str, *values: Any) -> list[Any]:
        """The one event behind every follower: each gets its own inputs, in registration order."""
        out: list[Any] = []
        start = 0
        for follower in self.followers:
            args = values[start : start + len(follower.inputs)]
            start += len(follower.inputs)
            result = follower.fn(image, open_tab, *args)
            out.extend(result if len(follower.outputs) > 1 else [result])
        return out


TAB_ID_PREFIX = "tab-"  # a tab's panel is the element with id TAB_ID_PREFIX + its id
# Runs in the browser before the follow-up event: which tab is on screen, read from the page
# itself. The server's record (Ctx.open_tab, set by each tab's select event) can lag behind a
# click: while the tab bar lays itself out, Gradio sends a select for the first tab that may be
# processed after the user's own.
OPEN_TAB_JS = f"""(image, open_tab, ...rest) => {{
  const shown = [...document.querySelectorAll('.tabitem[id^="{TAB_ID_PREFIX}"]')].find(e => e.offsetParent !== null);
  return [image, shown ? shown.id.slice({len(TAB_ID_PREFIX)}) : open_tab, ...rest];
}}"""


def opened(tab_id: str) -> Callable[[], str]:
    """Event handler that records which tab is open (for follow-ups of a new image)."""

    def remember() -> str:
        return tab_id

    return remember
