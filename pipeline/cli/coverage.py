"""``flows report coverage``: observed namespaces against the ones that sent egress in a range.

A thin adapter: egress per namespace from the ``fanout`` view, pod counts over the range from
``current_claims``, the selection from ``--namespaces``, or the observation policy's selector
over the Namespace objects of ``--inventory``; ``pipeline.analysis.coverage`` decides.
``flows report html`` reuses ``collect_coverage``. It registers itself in the ``report`` group.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
import yaml

from pipeline.analysis import coverage as cov
from pipeline.analysis.replay_facts import inventory_facts
from pipeline.analysis.reports import FANOUT_SQL
from pipeline.analysis.selectors import Selector, SelectorError, calico_selector
from pipeline.basics.config import Settings
from pipeline.cli import common as cli
from pipeline.cli import report as analysis
from pipeline.cli.replay import read_inventory
from pipeline.cli.report import report_app

T = "DateTime64(6, 'UTC')"
POD_COUNTS_SQL = (
    "SELECT namespace, uniqExact(uid) AS pods, "
    f"uniqExactIf(uid, valid_from <= {{end:{T}}} AND (valid_to IS NULL OR valid_to >= {{end:{T}}})) AS pods_at_end "
    f"FROM current_claims WHERE kind = 'pod' AND valid_from < {{until:{T}}} "
    f"AND (valid_to IS NULL OR valid_to >= {{since:{T}}}) GROUP BY namespace ORDER BY namespace"
)
KNOWN_SQL = "SELECT DISTINCT namespace FROM current_claims WHERE kind = 'pod' ORDER BY namespace"


async def collect_coverage(settings: Settings, lo: datetime, hi: datetime, selection: cov.Selection | None
                           ) -> tuple[cov.Selection, list[dict[str, Any]]]:
    """The selection (every known namespace when None) and one coverage row per namespace."""
    egress = await analysis._rows(settings, FANOUT_SQL, since=lo, until=hi)
    pods = await analysis._rows(settings, POD_COUNTS_SQL, since=lo, until=hi, end=min(hi, analysis._now()))
    if selection is None:
        known = [r["namespace"] for r in await analysis._rows(settings, KNOWN_SQL)]
        known += [r["namespace"] for r in await analysis._rows(
            settings, analysis.NAMESPACES_SQL, since=lo, until=hi)]
        selection = cov.select(None, None, None, known)
    return selection, cov.coverage_rows(selection, egress, pods)


async def coverage_summary(settings: Settings, lo: datetime, hi: datetime, inventory: Any = None
                           ) -> dict[str, Any]:
    """The coverage section of ``flows report html``: the default observation selector when the
    inventory holds Namespace objects, else every namespace known."""
    labels = inventory_facts(inventory)[0] if inventory is not None else {}
    selection = cov.select(None, labels, calico_selector(cov.OBSERVE_SELECTOR), []) if labels else None
    chosen, rows = await collect_coverage(settings, lo, hi, selection)
    return {"summary": cov.summary(chosen, rows), "selection": chosen.how, "namespaces": rows}


def _observe_selector(path: Path | None) -> Selector:
    if path is None:
        return calico_selector(cov.OBSERVE_SELECTOR)
    try:
        return cov.observation_selector(yaml.safe_load(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise cli.fail(f"cannot read {path}: {exc.strerror}") from None
    except (yaml.YAMLError, ValueError) as exc:  # SelectorError is a ValueError
        raise cli.fail(f"{path}: {exc}") from None


@report_app.command("coverage")
def report_coverage(
    since: analysis.Since = None,
    until: analysis.Until = None,
    namespaces: Annotated[str | None, typer.Option(help="comma-separated observed namespaces")] = None,
    inventory: Annotated[Path | None, typer.Option(
        help="kubectl get namespaces -o json: every namespace and its labels")] = None,
    observe_policy: Annotated[Path | None, typer.Option(
        help="the observation GlobalNetworkPolicy (default selector: egress-flows/observe == 'true')")] = None,
    fmt: analysis.Format = "table",
) -> None:
    """Observed namespaces against those with egress; each silent one: no pods, zero now, or running."""
    cli.check_format(fmt)
    settings = cli.load_settings()
    lo, hi = analysis._window(since, until)
    selection = None
    if namespaces is not None:
        selection = cov.select([n.strip() for n in namespaces.split(",") if n.strip()], None, None, [])
    elif inventory is not None:
        labels, _ = inventory_facts(read_inventory(inventory))
        if not labels:
            raise cli.fail(f"{inventory} holds no Namespace objects (kubectl get namespaces -o json)")
        try:
            selection = cov.select(None, labels, _observe_selector(observe_policy), [])
        except SelectorError as exc:
            raise cli.fail(str(exc)) from None
    elif observe_policy is not None:
        raise cli.fail("--observe-policy needs --inventory (namespace labels are not in the ownership table)")
    chosen, rows = cli.run(collect_coverage(settings, lo, hi, selection))
    headline = cov.summary(chosen, rows)
    if fmt == "json":
        print(orjson.dumps({"selection": chosen.how, "summary": headline, "namespaces": rows},
                           option=orjson.OPT_INDENT_2).decode())
        return
    cli.err.print(f"{headline} (selection: {chosen.how})", highlight=False)
    analysis._emit(rows, fmt, "Coverage of the observation")
