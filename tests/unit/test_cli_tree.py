"""The ``flows`` command tree that users and scripts rely on stays as it is.

Every command path with every parameter's names, envvar, default and type is compared with a
golden file written from the CLI as it was before the commands were regrouped by module, so a
move of code cannot silently rename, drop or re-default anything. A deliberate interface
change rewrites the file (``UPDATE_GOLDEN=1``) and shows up in review as a diff of it.
"""

from __future__ import annotations

import json
import os
from typing import Any

import typer

from pipeline.cli.app import app
from tests.conftest import ROOT

GOLDEN = ROOT / "tests" / "golden" / "cli_tree.json"


def _param(p: Any) -> dict[str, Any]:
    return {
        "name": p.name,
        "kind": p.param_type_name,
        "opts": list(p.opts),
        "secondary_opts": list(p.secondary_opts),
        "envvar": p.envvar,
        "default": None if callable(p.default) else p.default,
        "required": p.required,
        "multiple": p.multiple,
        "is_flag": getattr(p, "is_flag", False),
        "type": str(p.type_descriptor.annotation),
        "range": [p.min, p.max] if hasattr(p, "min") else None,
    }


def command_tree(command: Any, path: tuple[str, ...] = ()) -> dict[str, Any]:
    """``{"flows report drift": [params...], ...}`` for every command and group under ``command``."""
    tree = {" ".join(("flows", *path)): [_param(p) for p in command.params]}
    for name, sub in getattr(command, "commands", {}).items():
        tree.update(command_tree(sub, (*path, name)))
    return tree


def test_command_tree_is_stable() -> None:
    tree = json.loads(json.dumps(command_tree(typer.main.get_command(app)), default=str, sort_keys=True))
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(tree, indent=1, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert sorted(tree) == sorted(golden), "commands were added or removed"
    for path, params in golden.items():
        assert tree[path] == params, f"{path}: options changed; UPDATE_GOLDEN=1 rewrites the file after review"
