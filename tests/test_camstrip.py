"""What the page gets to draw the Grad-CAM strip: every class's maps, at their stage resolution,
close enough to the server's floats that no colour step changes (the drawing itself is held to
the server's overlays in a real browser by tests/test_app_speed.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
CAT = ROOT / "assets" / "samples" / "cat_0.png"


@pytest.fixture(scope="module")
def analysed():
    from explorer import context
    from explorer.tabs import gradcam

    entry = context.CACHE.entry(str(CAT))
    return context, gradcam, entry


def test_the_strip_carries_every_class_and_the_view_asked_for(analysed) -> None:
    context, gradcam, entry = analysed
    sent = gradcam.strip(entry, "ship", 0.3, "shared")
    assert len(entry.cams) == 10  # computed with the analysis: any class is drawn without a request
    assert sent["view"] == {"target": "ship", "opacity": 0.3, "scale": "shared"}
    assert sent["classes"][sent["predicted"]] == context.CLASSES[int(np.argmax(entry.probs))]
    assert [(s["name"], s["h"], s["stride"]) for s in sent["stages"]] == [
        ("layer1", 32, 1), ("layer2", 16, 2), ("layer3", 8, 4), ("layer4", 4, 8)]
    assert len(json.dumps(sent)) < 60_000  # 16 bits a value: ~42 KB for ten classes


def test_the_maps_arrive_within_a_fraction_of_a_colour_step(analysed) -> None:
    from explorer import camstrip

    _, gradcam, entry = analysed
    received = camstrip.decode(gradcam.strip(entry, "predicted class", 0.5, "per map"))
    for c in range(10):
        for stage, sent in entry.cams[c].items():
            top = float(sent.max())
            np.testing.assert_allclose(received[c][stage], sent, atol=top / 65535 + 1e-12)
            assert received[c][stage].max() == pytest.approx(top, rel=1e-6)


def test_bad_views_are_refused_with_a_sentence(analysed) -> None:
    _, gradcam, entry = analysed
    with pytest.raises(ValueError, match="Colour scale"):
        gradcam.strip(entry, "ship", 0.5, "log")
    with pytest.raises(ValueError, match="Opacity"):
        gradcam.strip(entry, "ship", 1.5, "per map")
    with pytest.raises(ValueError, match="Unknown target class"):
        gradcam.strip(entry, "giraffe", 0.5, "per map")


def test_a_partial_analysis_is_not_sent(analysed) -> None:
    from dataclasses import replace

    from explorer import camstrip

    _, _, entry = analysed
    partial = replace(entry, cams={0: entry.cams[0]})
    with pytest.raises(ValueError, match="every class"):
        camstrip.payload(partial, {}, 256, {"layer1": 1, "layer2": 2, "layer3": 4, "layer4": 8})
