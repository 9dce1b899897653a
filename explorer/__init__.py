"""The Gradio explorer: one module per view, wired into one page.

``context`` loads the model and assets once and holds the helpers every view
shares; ``ui`` the upload component and the shared components (``Ctx``);
``plots`` the plotting helpers; ``classify`` the panel on top and the analysis
of a new image; ``tabs/`` one module per tab, each with its layout, handlers
and figures (``tabs.TABS`` lists them in page order); ``layout`` builds the
page and launches the server.

Adding a view: write ``tabs/<name>.py`` with a ``build(ctx)`` and add it to
``tabs.TABS``. Handlers are pure glue from components to ``insight`` functions;
every event gets an ``api_name``. Depends on gradio, plotly, ``insight`` and
``resnet``; never on ``train``.
"""

from .layout import build_demo, launch

__all__ = ["build_demo", "launch"]
