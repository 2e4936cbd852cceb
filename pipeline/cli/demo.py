"""``flows demo`` and ``flows bench``: bundled synthetic data through the real pipeline."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import orjson
import typer

from pipeline.analysis.reports import fanout_table_rows, render
from pipeline.cli import common as cli


@cli.app.command()
def demo(
    records: Annotated[int, typer.Option(min=100, max=1_000_000)] = 20_000,
    namespaces: Annotated[int, typer.Option(min=2, max=500)] = 40,
    home: Annotated[Path | None, typer.Option(help="keep the demo's data here (default: a temp dir)")] = None,
) -> None:
    """Bundled sample data through the real pipeline (broker, worker, ClickHouse), then the fan-out."""
    from pipeline.tooling.demo import run_demo

    cli.setup_logging(False)
    logging.getLogger("flows").setLevel(logging.WARNING)
    rows, summary_row, expected = cli.run(run_demo(records, namespaces, home, cli.err))
    render(fanout_table_rows(rows), "table", "Egress fan-out per namespace (demo)", console=cli.out)
    cli.out.print(f"records {summary_row.get('records')} · rejected {summary_row.get('rejected')} · "
                  f"unattributed {summary_row.get('unattributed')} · expected records {expected.records}, "
                  f"rejected {expected.rejected}", highlight=False)


@cli.app.command()
def bench(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="small sizes, for a smoke run")] = False,
) -> None:
    """Throughput, latency, query time and memory, beside ceilings measured in the same run."""
    from pipeline.tooling.bench import run_bench, verdicts

    result = cli.run(run_bench(quick, lambda step: cli.err.print(f"[dim]bench:[/dim] {step}", highlight=False)))
    if as_json:
        print(orjson.dumps(result).decode())
        return
    checks = verdicts(result)
    rows = [{"measure": k, "value": f"{v:,.3f}" if isinstance(v, float) else str(v), "target": checks.get(k, "")}
            for k, v in result.items()]
    render(rows, "table", "flows bench", console=cli.out)
