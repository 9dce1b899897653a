"""The page: header, classify panel, one tab per view; and the server that serves it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import gradio as gr

from insight.contrast import import_attribution_libraries
from resnet import preprocess
from resnet.weights import MAX_CHECKPOINT_BYTES

from . import classify
from .cache import Entry
from .context import ASSETS, CACHE, CARD, PASSES, USER_EVALUATION, USER_WEIGHTS
from .tabs import TABS
from .ui import TAB_ID_PREFIX


def _header_markdown() -> str:
    if USER_WEIGHTS is not None:
        unavailable = (
            "the training curves and the replay are not available for them; the test-set views show the evaluation "
            "given with them" if USER_EVALUATION
            else "the training curves, the replay and the shipped test-set results are not available for them"
        )
        return (
            "# ResNet-50 on CIFAR-10, explained\n"
            f"**Showing other weights:** {USER_WEIGHTS.describe()}, trained elsewhere, not the shipped model: "
            f"{unavailable}. Upload any image or pick a test image to see what they predict, where each stage looks "
            "(Grad-CAM), what the feature maps hold and how much every residual block changes its input."
        )
    acc = CARD.get("test_accuracy")
    acc_text = f"{acc * 100:.2f}% test accuracy" if isinstance(acc, (int, float)) else "test accuracy not measured"
    notes = CARD.get("notes", "")
    return (
        "# ResNet-50 on CIFAR-10, explained\n"
        "A ResNet-50 trained from scratch on 32x32 CIFAR-10 images "
        f"({acc_text}, {CARD.get('dataset', 'CIFAR-10')}). Upload any image or pick a test image: "
        "see what it predicts, where each stage looks (Grad-CAM), what the feature maps hold and "
        "how much every residual block changes its input."
        + (f"\n\n> **Note on these weights:** {notes}" if notes else "")
    )


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="ResNet-50 on CIFAR-10, explained", analytics_enabled=False) as demo:
        gr.Markdown(_header_markdown())
        ctx = classify.build_panel()
        with gr.Tabs() as tabs:
            for tab in TABS:
                tab.build(ctx)
        for tab in tabs.children:
            # The follow-up event reads which tab is on screen from these ids (ui.OPEN_TAB_JS).
            tab.elem_id = tab.elem_id or f"{TAB_ID_PREFIX}{tab.id}"
        classify.wire_analysis(ctx, demo)
        for tab in TABS:
            if hasattr(tab, "on_unload"):  # a tab holding per-session resources frees them when the page closes
                demo.unload(tab.on_unload)
        answer_the_latest_move(demo)
    # Two requests at a time on a 2-core CPU; a bounded queue answers "busy"
    # instead of piling up work.
    demo.queue(default_concurrency_limit=2, max_size=32)
    return demo


# Events that keep Gradio's "once": a timer tick that finds the last one still running is
# rightly dropped (the next comes soon), and the page's load and unload happen once.
ONCE = {"tick", "load", "unload"}


def answer_the_latest_move(demo: gr.Blocks) -> None:
    """Every event a user's move fires is answered for the controls' latest values.

    Gradio's default for all but ``.change`` events is "once": the browser drops an event fired
    while the same one is still running. A slider released, a class or a tab chosen, a sample
    clicked while the last answer is on its way would then be lost without a word, and the view
    would stay drawn for the values before. "always_last" runs it once more when the pending one
    ends, with the values of that moment (moves in between collapse into that one run).
    """
    for fn in demo.fns.values():
        if fn.trigger_mode == "once" and not {event for _, event in fn.targets} & ONCE:
            fn.trigger_mode = "always_last"


def launch(demo: gr.Blocks) -> None:
    # Before any other thread exists (see the function): importing it in the warm-up, beside
    # the server's start-up, left the warm-up hung on an import lock in a test. Gradio imports
    # the matplotlib it pulls in on its first event, so the first request would pay it anyway.
    import_attribution_libraries()
    demo.launch(
        allowed_paths=[str(ASSETS)],  # the examples; nothing else on disk is served
        # Checkpoints for the Compare tab are larger than any image; each handler checks its own limit.
        max_file_size=max(preprocess.MAX_BYTES, MAX_CHECKPOINT_BYTES),
        ssr_mode=False,
        show_error=False,
        prevent_thread_lock=True,
    )
    # Once the server answers, and start-up waits for none of it: the warm-up.
    threading.Thread(target=_warm_up, args=(classify.samples_to_warm(),), name="warm-up", daemon=True).start()
    demo.block_thread()


def _warm_up(samples: list[Path]) -> None:
    """What the server does in the background once it answers:

    1. the opening example;
    2. the choice of the Grad-CAM engine (``insight.prepacked.PassMaker.choose``);
    3. the other samples.

    Every tab prepares what it shows first for each sample, so a click on one is served
    from the cache."""
    started = time.perf_counter()

    def skipped(path: Path, exc: Exception) -> None:
        print(f"warm-up skipped {path.name}: {exc}", flush=True)

    CACHE.warm(samples[:1], then=_prepare_views, on_error=skipped)
    PASSES.choose()
    print(f"Grad-CAM engine: {PASSES.engine}" + (f" ({PASSES.reason})" if PASSES.reason else ""), flush=True)
    CACHE.warm(samples[1:], then=_prepare_views, on_error=skipped)
    print(f"warm-up done: {len(samples)} samples in {time.perf_counter() - started:.1f} s", flush=True)


def _prepare_views(entry: Entry) -> None:
    for tab in TABS:
        if hasattr(tab, "prepare"):
            tab.prepare(entry)
