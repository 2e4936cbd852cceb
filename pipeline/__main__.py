"""``python -m pipeline`` is ``flows``."""

from pipeline.cli import app

app(prog_name="flows")
