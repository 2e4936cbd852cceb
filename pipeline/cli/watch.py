"""``flows watch k8s``: keep the owners topic in step with the cluster (list+watch, Lease-elected)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from pipeline.basics.config import Settings
from pipeline.cli import common as cli
from pipeline.k8s.session import WatchOptions
from pipeline.k8s.watch import Watcher

watch_app = typer.Typer(help="Follow live sources of ownership.", no_args_is_help=True)
cli.app.add_typer(watch_app, name="watch")


async def watch_main(settings: Settings, opts: WatchOptions) -> None:
    """Run the watcher until SIGINT/SIGTERM (the process entry point, also for tests)."""
    from pipeline.stack.run import install_stop_signals

    stop = asyncio.Event()
    install_stop_signals(stop)
    await Watcher(settings, opts).run(stop)


@watch_app.command("k8s")
def watch_k8s(
    kubeconfig: Annotated[Path | None, typer.Option(
        help="kubeconfig file; default: the pod's service account in a cluster, else $KUBECONFIG or ~/.kube/config",
        dir_okay=False)] = None,
    context: Annotated[str | None, typer.Option(help="kubeconfig context (default: its current-context)")] = None,
    namespace: Annotated[str | None, typer.Option(
        help="watch pods, services and endpointslices of this namespace only (nodes are then left to "
        "`flows inventory load`); default: all namespaces")] = None,
    metrics_port: Annotated[int, typer.Option(min=0, max=65535, help="/metrics, /healthz, /readyz port; 0: none")]
    = 9402,
    metrics_host: Annotated[str, typer.Option(help="address the metrics endpoint listens on")]
    = "0.0.0.0",  # noqa: S104 - runs in a pod: Prometheus scrapes the pod IP
    resync: Annotated[float, typer.Option(min=0, help="seconds between full re-lists that repair anything missed; "
                                          "0: re-list only after 410 Gone")] = 1800,
    watch_timeout: Annotated[int, typer.Option(min=1, help="timeoutSeconds of each watch request")] = 300,
    page_size: Annotated[int, typer.Option(min=1, max=10_000, help="objects per list page")] = 500,
    leader_elect: Annotated[bool, typer.Option(
        "--leader-elect/--no-leader-elect", help="publish only while holding the Lease (several replicas "
        "may run); --no-leader-elect needs a single replica")] = True,
    lease_name: Annotated[str, typer.Option(help="Lease used for leader election")] = "flows-k8s-watcher",
    lease_namespace: Annotated[str | None, typer.Option(
        help="namespace of the Lease (default: the pod's namespace, else default)")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Publish who owns which IP (pods, services, nodes) and which Service each backend pod IP serves
    (EndpointSlices) from the Kubernetes watch API to the owners topic."""
    if namespace is not None and not namespace:
        raise cli.fail("--namespace must not be empty")
    cli.setup_logging(verbose)
    settings = cli.load_settings()
    opts = WatchOptions(
        kubeconfig=str(kubeconfig) if kubeconfig else None, context=context, namespace=namespace,
        resync_s=resync, watch_timeout_s=watch_timeout, page_size=page_size, leader_elect=leader_elect,
        lease_name=lease_name, lease_namespace=lease_namespace, metrics_host=metrics_host, metrics_port=metrics_port,
    )
    cli.run(watch_main(settings, opts))
