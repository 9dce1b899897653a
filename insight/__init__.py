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
