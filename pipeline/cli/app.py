"""The ``flows`` command line: the root app with every command module registered on it.

Each module named in ``COMMAND_MODULES`` adds its commands to ``pipeline.cli.common.app`` when
imported (top-level commands with ``@cli.app.command()``, a group with ``cli.app.add_typer``),
so a new command module is one more name there; the order is the order ``flows --help`` lists
them in. Modules import their heavy dependencies inside the commands, so ``--help`` stays quick.
"""

from __future__ import annotations

from importlib import import_module

from pipeline.cli.common import app

COMMAND_MODULES = (
    "stack", "demo", "policy", "replay", "report", "coverage", "ship", "inventory", "topics", "baseline", "watch",
    "reattribute",
)

for _name in COMMAND_MODULES:
    import_module(f"pipeline.cli.{_name}")

__all__ = ["app"]
