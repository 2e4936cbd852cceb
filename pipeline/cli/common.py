"""What every ``flows`` command shares: the root app, consoles, clear failures, settings, running a coroutine.

Each command module registers its commands (or its group) on ``app`` here when imported;
``pipeline.cli.app`` is the list of those modules. Kept apart from it so that a command module
can be imported alone (tests do) without importing every other one.
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

app = typer.Typer(help="Egress observatory: Calico packet logs -> Kafka -> ClickHouse.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
out = Console()
err = Console(stderr=True)
Format = Annotated[str, typer.Option("--format", "-f", help="table, json or csv")]


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)  # one line, however long
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
