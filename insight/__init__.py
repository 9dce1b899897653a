"""What the explorer shows, computed: pure functions over a model and arrays.

Grad-CAM at every stage (``gradcam``; ``captum_reference`` computes the same
maps with Captum, the reference), a contrasting attribution (``contrast``),
activations and their most active channels (``activations``), the inside of a
residual block (``anatomy``), the architecture table (``architecture``), maps
drawn over images (``render``), robustness probes (``robustness``), calibration
(``calibration``), the test-set explorer's data (``testset``), the saliency
sanity check (``sanity``), the channel atlas (``atlas``) and the training
replay (``replay``).

Depends on ``resnet``, torch, numpy and captum (imported on first use); never
on gradio, plotly or ``train``. Inputs and outputs are tensors, numpy arrays
and plain data, so every function is testable without a server.
"""


def import_attribution_libraries() -> None:
    """Import captum (and the matplotlib it pulls in) now, on the calling thread.

    A server calls this before it takes requests: two request threads importing
    matplotlib at once can meet a half-initialised module (seen: a warm-up's
    first Integrated Gradients beside the first request).
    """
    import captum.attr  # noqa: F401
    import captum.robust  # noqa: F401
