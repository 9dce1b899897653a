"""The classify panel on top of the page, and the one analysis every new image gets.

A new image is answered by one forward and one backward pass (``analyze``):
the top-5, the true class for a shipped sample, what the network saw, the
four Grad-CAM maps and the feature maps. The tabs that show more follow on
``ctx.analysed.change``.
"""

from __future__ import annotations

import gradio as gr

from insight import gradcam
from resnet import CLASSES

from .context import MODEL, SAMPLES, TOP_K, enlarge, model_input, target_index, truth, user_errors
from .tabs.features import N_FEATURE_PLOTS, feature_figures
from .tabs.gradcam import cam_outputs
from .ui import Ctx, UploadImage


def build_panel() -> Ctx:
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


def _blank_analysis() -> tuple:
    return (None, "", None, [], "", None, *([None] * N_FEATURE_PLOTS))


@user_errors
def classify(image: str | None) -> dict[str, float]:
    """Top-5 classes with their probabilities for one image."""
    x = model_input(image)
    return gradcam.top_k(gradcam.predict_probs(MODEL, x.tensor), TOP_K)


@user_errors
def analyze(image: str | None, target: str, opacity: float, scale: str, n_channels: float) -> tuple:
    """Everything for a new image from one forward + backward pass."""
    if image is None:
        return _blank_analysis()
    x = model_input(image, tell_user=True)
    result = gradcam.analyze(MODEL, x.tensor, target_index(target))
    return (
        result.top_k(TOP_K),
        truth(image, result.predicted),
        enlarge(x.seen),
        *cam_outputs(result, x.seen, opacity, scale),
        *feature_figures(result.features, n_channels),
    )


def wire_analysis(ctx: Ctx) -> None:
    """A new image: one forward + backward answers the prediction, the four
    Grad-CAMs and the feature maps; the other tabs follow on ctx.analysed.change."""
    c, o = ctx.controls, ctx.outputs
    ctx.image.change(
        analyze,
        inputs=[ctx.image, c["target"], c["opacity"], c["scale"], c["n_channels"]],
        outputs=[o["label"], o["truth"], ctx.analysed, o["cams"], o["cam_note"], o["cam_raw"], *o["feature_plots"]],
        api_name="analyze",
    )
