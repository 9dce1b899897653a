"""ResNet-50 on CIFAR-10, explained: the Gradio explorer.

``python app.py`` serves it (honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT);
the same file is a Hugging Face Space's ``app_file``. This module only builds
the interface and wires events (``app_handlers`` holds what the events call); the work is done by pure functions in
``resnet.explain`` / ``resnet.preprocess`` / ``resnet.testset`` /
``resnet.robustness`` / ``resnet.sanity`` (arrays in, arrays out) and the
figures by ``app_figures`` and ``app_insights_figures``.

Layout: a classify panel on top (upload, examples, top-k, what the network
saw), then one tab per view. Each tab is one ``build_*_tab(ctx)`` function in
``TABS``; to add a tab, write a builder and append it there. A tab that must
follow the current image takes ``ctx.image`` as an input and lists
``ctx.analysed.change`` among its triggers (it fires once per analysed image,
after the main ``analyze`` event, and not when that event refused the upload).
Every event gets an ``api_name``.

The insight tabs (Robustness, Sanity check, Test set, Calibration) never add
work to ``analyze``: they compute when their tab is selected or a control
asks. A new image recomputes the image-based ones only while their tab is on
screen (``ctx.open_tab``) and otherwise clears them, so nothing stale shows.
"""

from __future__ import annotations

# app_handlers first: it switches Gradio's telemetry off before gradio is imported.
from app_handlers import (  # noqa: I001
    ARCHITECTURE,
    ASSETS,
    BLOCK_NAMES,
    CARD,
    CLASSES,
    PREDICTED,
    SAMPLES,
    SCALES,
    STAGE_NAMES,
    TARGET_CHOICES,
    TOP_K,
    analyze,
    block_anatomy,
    calibration,
    classify,
    confusion_matrix,
    contrast,
    contrast_follow,
    explain,
    feature_maps,
    figs,
    gradcam,
    open_test_set,
    opened,
    preprocess,
    robustness,
    robustness_follow,
    robustness_probe,
    robustness_sweep,
    sanity_check,
    sanity_follow,
    select_test_image,
    test_image_cams,
    test_pair_gallery,
    training_curves,
)

from dataclasses import dataclass, field
from typing import Any, Callable

import gradio as gr


# ----- the upload component ------------------------------------------------------------------


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


# ----- layout ----------------------------------------------------------------------------------


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


def _header_markdown() -> str:
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


def build_classify_panel() -> Ctx:
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            image = UploadImage(
                type="filepath",
                image_mode=None,  # keep the file as uploaded; preprocess.load_image converts
                sources=["upload", "webcam", "clipboard"],
                label="Your image (any size; centre-cropped to a square)",
                height=300,
                elem_id="input-image",
            )
            if SAMPLES:
                gr.Examples(
                    examples=[[str(p)] for p in SAMPLES.values()],
                    inputs=[image],
                    label=f"{len(SAMPLES)} CIFAR-10 test images, {len(SAMPLES) // len(CLASSES)} per class in the order "
                    f"{', '.join(CLASSES)}: click one (its true class appears under the prediction)",
                    examples_per_page=len(SAMPLES),
                    elem_id="samples",
                )
        with gr.Column(scale=2):
            seen = gr.Image(
                label="What the network sees (32x32, enlarged)",
                interactive=False,
                format="png",
                height=256,
                elem_id="seen-image",
            )
            label = gr.Label(num_top_classes=TOP_K, label="Prediction (top 5)", elem_id="prediction")
            truth = gr.Markdown(label="true class", elem_id="true-class")
    ctx = Ctx(image=image, analysed=seen, open_tab=gr.State("gradcam"))
    ctx.outputs.update(label=label, truth=truth)
    classify_button = gr.Button("classify", visible=False)
    classify_button.click(classify, inputs=[image], outputs=[label], api_name="classify")
    return ctx


def build_gradcam_tab(ctx: Ctx) -> None:
    with gr.Tab("Grad-CAM at every stage", id="gradcam") as tab:
        gr.Markdown(
            "Captum's `LayerGradCam` (ReLU applied) at the output of each stage, for the class you choose: "
            "where the evidence for that class sits at each depth. All four maps come from one forward and "
            "one backward pass."
        )
        with gr.Row():
            target = gr.Dropdown(TARGET_CHOICES, value=PREDICTED, label="Explain class", scale=2)
            opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity", scale=2)
            scale = gr.Radio(list(SCALES), value="per map", label="Colour scale", scale=1)
        cams = gr.Gallery(
            label="Grad-CAM overlays",
            columns=4,
            rows=1,
            height=300,
            object_fit="contain",
            format="png",
            elem_id="gradcam-gallery",
        )
        note = gr.Markdown(label="Grad-CAM note")
        with gr.Accordion("Raw Grad-CAM values (stage resolution)", open=False):
            raw = gr.JSON(label="maps")
        gr.Markdown("### For contrast: a method that does not look inside the stages")
        with gr.Row():
            with gr.Column(scale=1):
                method = gr.Radio(list(explain.CONTRAST_METHODS), value=explain.CONTRAST_METHODS[0], label="Method")
                contrast_note = gr.Markdown(label="contrast note")
            contrast_image = gr.Image(label="Attribution", interactive=False, format="png", height=256, scale=1)
    ctx.controls.update(target=target, opacity=opacity, scale=scale)
    ctx.outputs.update(cams=cams, cam_note=note, cam_raw=raw)
    gr.on(
        [target.change, scale.change, opacity.release],
        gradcam,
        inputs=[ctx.image, target, opacity, scale],
        outputs=[cams, note, raw],
        api_name="gradcam",
    )
    gr.on(
        [tab.select, method.change, target.change, opacity.release],
        contrast,
        inputs=[ctx.image, target, method, opacity],
        outputs=[contrast_image, contrast_note],
        api_name="contrast",
    )
    ctx.analysed.change(
        contrast_follow,
        inputs=[ctx.image, ctx.open_tab, target, method, opacity],
        outputs=[contrast_image, contrast_note],
        api_name="contrast_follow",
        api_visibility="private",
    )


def build_features_tab(ctx: Ctx) -> None:
    with gr.Tab("Feature maps", id="features"):
        n = gr.Slider(1, 64, value=16, step=1, label="Channels per stage (most active first, by mean activation)")
        gr.Markdown("Each panel is one channel; all panels of a stage share one colour scale. Hover for channel and value.")
        plots = [gr.Plot(label=name, elem_classes=["feature-plot"]) for name in ("stem", *STAGE_NAMES)]
    ctx.controls["n_channels"] = n
    ctx.outputs["feature_plots"] = plots
    n.release(feature_maps, inputs=[ctx.image, n], outputs=plots, api_name="feature_maps")


def build_blocks_tab(ctx: Ctx) -> None:
    with gr.Tab("Inside a residual block", id="blocks"):
        with gr.Row():
            block = gr.Dropdown(BLOCK_NAMES, value=BLOCK_NAMES[0], label="Bottleneck block (16)")
            view = gr.Radio(["channel mean", "one channel"], value="channel mean", label="Show")
            channel = gr.Slider(0, 2047, value=0, step=1, label="Channel (for 'one channel')")
        gr.Markdown(
            "Each bottleneck block computes a correction F(x) and adds it to its input x (or to a 1x1 "
            "projection of x where the shape changes), so its output is ReLU(F(x) + x). The bar chart shows, "
            "for this image, how large each block's correction is next to x: near 0 the block passes its "
            "input through almost unchanged, near 1 or above it rewrites it."
        )
        anatomy = gr.Plot(label="x, F(x), F(x) + x, ReLU(F(x) + x)", elem_classes=["anatomy-plot"])
        ratios = gr.Plot(label="||F(x)|| / ||x|| over all 16 blocks", elem_classes=["anatomy-plot"])
    gr.on(
        [ctx.analysed.change, block.change, view.change, channel.release],
        block_anatomy,
        inputs=[ctx.image, block, view, channel],
        outputs=[anatomy, ratios],
        api_name="block_anatomy",
    )


def build_robustness_tab(ctx: Ctx) -> None:
    with gr.Tab("Robustness", id="robustness") as tab:
        gr.Markdown(
            "What breaks the prediction? Corrupt the current image with the sliders (applied in the order "
            "brightness/contrast, blur, noise, patch, then FGSM) and compare the top 5 and the Grad-CAM before and "
            "after. FGSM is Captum's `captum.robust.FGSM`: one signed-gradient step of at most epsilon per pixel "
            "that raises the loss of the reference class. The reference class is the true class for one of the "
            "test images above, otherwise the model's prediction for the clean image."
        )
        with gr.Row():
            noise = gr.Slider(0.0, 0.5, value=0.0, step=0.01, label="Gaussian noise sigma (fraction of 0..255)")
            blur_sigma = gr.Slider(0.0, 3.0, value=0.0, step=0.1, label="Blur sigma (pixels)")
            brightness = gr.Slider(-0.5, 0.5, value=0.0, step=0.02, label="Brightness shift (fraction of 0..255)")
            contrast_ = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Contrast (1 = unchanged, 0 = flat grey)")
        with gr.Row():
            patch_size = gr.Slider(0, 32, value=0, step=1, label="Occluding patch side (pixels, 0 = none)")
            patch_x = gr.Slider(0, 31, value=16, step=1, label="Patch centre x (column)")
            patch_y = gr.Slider(0, 31, value=16, step=1, label="Patch centre y (row)")
            fgsm_levels = gr.Slider(0, 16, value=0, step=1, label="FGSM epsilon (x/255 per pixel)", elem_id="fgsm-slider")
        with gr.Row():
            stage = gr.Radio(list(STAGE_NAMES), value="layer3", label="Grad-CAM layer", scale=2)
            reset = gr.Button("Reset sliders", scale=1)
        with gr.Row(equal_height=False):
            perturbed = gr.Image(label="Perturbed image (what is classified, enlarged)", interactive=False, format="png",
                                 height=256, elem_id="perturbed-image")
            clean_label = gr.Label(num_top_classes=TOP_K, label="Clean image (top 5)", elem_id="clean-prediction")
            perturbed_label = gr.Label(num_top_classes=TOP_K, label="Perturbed image (top 5)", elem_id="perturbed-prediction")
        with gr.Row(equal_height=False):
            # Square cells: a gallery's thumbnails are square, so a fixed height would crop them.
            cams = gr.Gallery(label="Grad-CAM for the reference class: clean vs perturbed", columns=2, rows=1,
                              object_fit="contain", format="png", allow_preview=False, elem_id="robustness-cams", scale=2)
            note = gr.Markdown(elem_id="robustness-note")
        gr.Markdown("### Sweep one perturbation")
        with gr.Row():
            kind = gr.Dropdown(list(robustness.SWEEP_KINDS), value="noise", label="Perturbation", scale=2)
            sweep_button = gr.Button("Sweep", variant="primary", scale=1, elem_id="sweep-button")
        line = gr.Plot(label="Reference-class confidence as the strength grows", elem_id="robustness-plot")
        sweep_note = gr.Markdown(elem_id="sweep-note")
    sliders = [noise, blur_sigma, brightness, contrast_, patch_size, patch_x, patch_y, fgsm_levels]
    probe_outputs = [perturbed, clean_label, perturbed_label, cams, note]
    gr.on(
        [tab.select, stage.change, *(s.release for s in sliders)],
        robustness_probe,
        inputs=[ctx.image, *sliders, stage],
        outputs=probe_outputs,
        api_name="robustness_probe",
    )
    rest = [0.0, 0.0, 0.0, 1.0, 0, 16, 16, 0]
    reset.click(
        lambda: rest, outputs=sliders, api_name="robustness_reset", api_visibility="private", queue=False
    ).then(robustness_probe, inputs=[ctx.image, *sliders, stage], outputs=probe_outputs, api_visibility="private")
    gr.on(
        [tab.select, sweep_button.click, kind.change],
        robustness_sweep,
        inputs=[ctx.image, kind, patch_x, patch_y],
        outputs=[line, sweep_note],
        api_name="robustness_sweep",
    )
    ctx.analysed.change(
        robustness_follow,
        inputs=[ctx.image, ctx.open_tab, *sliders, stage, kind],
        outputs=[*probe_outputs, line, sweep_note],
        api_name="robustness_follow",
        api_visibility="private",
    )


def build_sanity_tab(ctx: Ctx) -> None:
    with gr.Tab("Sanity check", id="sanity"):
        gr.Markdown(
            "Does the Grad-CAM depend on what the model learned? The model-randomisation check of Adebayo et al. "
            "(2018, *Sanity Checks for Saliency Maps*): recompute the map with the last stage's weights "
            "re-initialised (He init, fresh BatchNorm) and compare the two maps by Spearman rank correlation. "
            "A map that survives random weights (high correlation) explains the image or the architecture, "
            "not the model. Cascade re-initialises layer4, then layer4+layer3, and so on down to layer1."
        )
        with gr.Row():
            cascade = gr.Checkbox(False, label="Cascade: layer4, then layer3, layer2, layer1 too")
            stage = gr.Radio(list(STAGE_NAMES), value="layer4", label="Compare the Grad-CAM at")
            run = gr.Button("Run the sanity check", variant="primary", elem_id="sanity-button")
        maps = gr.Gallery(label="Grad-CAM: trained vs re-initialised", columns=5, rows=1,
                          object_fit="contain", format="png", allow_preview=False, elem_id="sanity-gallery")
        verdict = gr.Markdown(elem_id="sanity-verdict")
        figure = gr.Plot(label="Spearman rank correlation per Grad-CAM layer", elem_id="sanity-plot")
        with gr.Accordion("Numbers", open=False):
            numbers = gr.JSON(label="metrics")
    outputs = [maps, figure, verdict, numbers]
    run.click(sanity_check, inputs=[ctx.image, cascade, stage], outputs=outputs, api_name="sanity_check")
    ctx.analysed.change(sanity_follow, inputs=[ctx.image, ctx.open_tab, cascade, stage], outputs=outputs,
                        api_name="sanity_follow", api_visibility="private")


def build_test_set_tab(ctx: Ctx) -> None:
    with gr.Tab("Test set", id="testset") as tab:
        gr.Markdown(
            "Where does the model fail? The confusion matrix counts every evaluated test image (rows: true class, "
            "columns: prediction). Pick a (true, predicted) pair to see its test images, most confident first, "
            "then click one to compare its Grad-CAM for the predicted and for the true class. Only a selection "
            "of the test set is shipped: every cell's most confident mistakes and some correct images per class."
        )
        missing = gr.Markdown(elem_id="testset-missing")
        summary = gr.Markdown(elem_id="testset-summary")
        normalise = gr.Checkbox(False, label="Colour by fraction of the true class (row-normalised); cells keep the counts")
        with gr.Row(equal_height=False):
            matrix = gr.Plot(label="Confusion matrix", elem_id="confusion-plot", scale=3)
            bars = gr.Plot(label="Accuracy per class", elem_id="class-accuracy-plot", scale=2)
        pair = gr.Dropdown([], value=None, label="True -> predicted (most frequent mistakes first, then each class's correct images)",
                           allow_custom_value=True, elem_id="pair-dropdown")
        pair_note = gr.Markdown(elem_id="pair-summary")
        thumbs = gr.Gallery(label="Test images of this pair (click one)", columns=8, height=340, object_fit="contain",
                            format="png", allow_preview=False, elem_id="test-gallery")
        rows = gr.State([])
        loaded = gr.State(False)
        with gr.Row():
            row = gr.Number(label="Test image # (row in evaluation.json; type one and press Enter)", precision=0,
                            elem_id="test-row")
            stage = gr.Radio(list(STAGE_NAMES), value="layer4", label="Grad-CAM layer")
        with gr.Row(equal_height=False):
            image = gr.Image(label="The test image (32x32, enlarged)", interactive=False, format="png", height=256, scale=1)
            cams = gr.Gallery(label="Grad-CAM: predicted class vs true class", columns=2, rows=1,
                              object_fit="contain", format="png", allow_preview=False, elem_id="test-cams", scale=2)
        note = gr.Markdown(elem_id="test-image-note")
    tab.select(open_test_set, inputs=[normalise, loaded], outputs=[missing, summary, matrix, bars, pair, loaded],
               api_name="test_set")
    normalise.change(confusion_matrix, inputs=[normalise], outputs=[matrix], api_name="confusion_matrix")
    pair.change(test_pair_gallery, inputs=[pair], outputs=[thumbs, rows, pair_note, row], api_name="test_pair_gallery")
    thumbs.select(select_test_image, inputs=[rows, stage], outputs=[row, image, cams, note],
                  api_name="test_select_image", api_visibility="private")
    gr.on([row.submit, stage.change], test_image_cams, inputs=[row, stage], outputs=[image, cams, note],
          api_name="test_image_cams")


def build_calibration_tab(ctx: Ctx) -> None:
    with gr.Tab("Calibration", id="calibration") as tab:
        gr.Markdown(
            "How sure is the model when it is wrong? The reliability diagram bins all evaluated test predictions by "
            "confidence (the top softmax probability) and plots each bin's accuracy: a calibrated model sits on "
            "the diagonal. The expected calibration error (ECE) is the gap, weighted by how many images each bin holds."
        )
        text = gr.Markdown(elem_id="calibration-summary")
        reliability = gr.Plot(label="Reliability diagram", elem_id="reliability-plot")
        histogram = gr.Plot(label="Confidence of right and wrong predictions", elem_id="confidence-plot")
        loaded = gr.State(False)
    tab.select(calibration, inputs=[loaded], outputs=[text, reliability, histogram, loaded], api_name="calibration")


def build_training_tab(ctx: Ctx) -> None:
    with gr.Tab("Training curves", id="training") as tab:
        summary = gr.Markdown(elem_id="training-summary")
        plot = gr.Plot(label="Loss, accuracy and learning rate per epoch", elem_id="training-plot")
    # Drawn when opened, not at start-up: the server answers its first request sooner.
    tab.select(training_curves, outputs=[summary, plot], api_name="training_curves")


def build_model_tab(ctx: Ctx) -> None:
    with gr.Tab("The model", id="model"):
        gr.Markdown("### Architecture (computed from the model on a 32x32 input)")
        gr.Markdown(figs.architecture_markdown(ARCHITECTURE), elem_id="architecture")
        gr.Markdown("### Model card")
        gr.Markdown(figs.card_markdown(CARD), elem_id="model-card")


# Add a tab: write build_x_tab(ctx) and append it here (order = order on the page).
TABS: list[Callable[[Ctx], None]] = [
    build_gradcam_tab,
    build_features_tab,
    build_blocks_tab,
    build_robustness_tab,
    build_sanity_tab,
    build_test_set_tab,
    build_calibration_tab,
    build_training_tab,
    build_model_tab,
]


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="ResNet-50 on CIFAR-10, explained", analytics_enabled=False) as demo:
        gr.Markdown(_header_markdown())
        ctx = build_classify_panel()
        with gr.Tabs() as tabs:
            for build_tab in TABS:
                build_tab(ctx)
        for tab in tabs.children:
            tab.select(opened(tab.id), outputs=[ctx.open_tab], queue=False, api_name=f"open_{tab.id}",
                       api_visibility="private")
        c, o = ctx.controls, ctx.outputs
        # One forward + backward answers the prediction, the four Grad-CAMs
        # and the feature maps; the other tabs follow on ctx.analysed.change.
        ctx.image.change(
            analyze,
            inputs=[ctx.image, c["target"], c["opacity"], c["scale"], c["n_channels"]],
            outputs=[o["label"], o["truth"], ctx.analysed, o["cams"], o["cam_note"], o["cam_raw"], *o["feature_plots"]],
            api_name="analyze",
        )
    # Two requests at a time on a 2-core CPU; a bounded queue answers "busy"
    # instead of piling up work.
    demo.queue(default_concurrency_limit=2, max_size=32)
    return demo


demo = build_demo()

if __name__ == "__main__":
    demo.launch(
        allowed_paths=[str(ASSETS)],  # the examples; nothing else on disk is served
        max_file_size=preprocess.MAX_BYTES,
        ssr_mode=False,
        show_error=False,
    )
