"""One module per tab, each with its layout (``build(ctx)``), event handlers and figures.

``TABS`` is the page order; adding a tab is one module and one line here.
"""

from . import (blocks, calibration, compare, features, gradcam, model, replay, residuals, robustness, sanity, testset,
               training)

TABS = (gradcam, features, blocks, residuals, robustness, sanity, testset, calibration, training, replay, model, compare)
