"""``flows topics create``: the raw and owners topics, for brokers that do not auto-create them."""

from __future__ import annotations

import typer

from pipeline.cli import common as cli

topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
cli.app.add_typer(topics_app, name="topics")


@topics_app.command("create")
def topics_create() -> None:
    """Create the raw and owners topics with the configured partitions."""
    from pipeline.transport.kafka import ensure_topics

    created = cli.run(ensure_topics(cli.load_settings()))
    cli.out.print(f"created: {', '.join(created)}" if created else "topics exist")
