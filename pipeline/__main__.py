"""``python -m pipeline`` is ``flows``."""

from pipeline.cli.app import app

app(prog_name="flows")
