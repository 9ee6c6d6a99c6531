"""lift-ray's Gradio front end (``lift-ray ui``, ``python -m ui``): a client of the engine, never a
second inference path. See :mod:`ui.app` for the tabs and :mod:`ui.backends` for the in-process
and Serve HTTP backends."""

import os

# No usage statistics leave the machine: Gradio reads this when it is imported.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
