"""One module per tab, each with its layout (``build(ctx)``), event handlers and figures.

``TABS`` is the page order; adding a tab is one module and one line here.
"""

from . import blocks, calibration, compare, features, gradcam, model, replay, robustness, sanity, testset, training

TABS = (gradcam, features, blocks, robustness, sanity, testset, calibration, training, replay, model, compare)
