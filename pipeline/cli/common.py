"""What every ``flows`` command shares: consoles, clear failures, settings, running a coroutine.

Kept apart from ``pipeline.cli.app`` so that feature modules in ``pipeline.cli`` can use it
without importing the CLI that registers them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler

from pipeline.basics.config import Settings
from pipeline.transport.kafka import NoBrokerError

out = Console()
err = Console(stderr=True)
Format = Annotated[str, typer.Option("--format", "-f", help="table, json or csv")]


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        raise fail(f"invalid configuration: {problems}") from None


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False)])
    logging.getLogger("aiokafka").setLevel(logging.WARNING if not verbose else logging.INFO)


def run(coro: Any) -> Any:
    """Run a coroutine, turning expected operational failures into clear messages."""
    try:
        return asyncio.run(coro)
    except NoBrokerError as exc:
        raise fail(str(exc)) from None
    except (ValueError, RuntimeError, OSError) as exc:
        raise fail(str(exc)) from None


def check_format(fmt: str, allowed: tuple[str, ...] = ("table", "json", "csv")) -> str:
    if fmt not in allowed:
        raise fail(f"--format must be one of {', '.join(allowed)}, not {fmt!r}")
    return fmt
