"""The rollout tier rule, defined once as data and rendered twice.

``evidence.assign_tier`` evaluates it in Python (``flows report tiers``, ``flows policy``), and
``tier_case_sql`` renders it as one ClickHouse ``multiIf`` for the Grafana dashboards. Both read
the same checks, so a threshold or an order changed here changes both; tests/system/test_grafana.py
runs the rendered SQL on chDB against the Python evaluation over generated measures.

A namespace is D or C by the first ``BROAD`` rule that holds, in order; otherwise it is A when
every ``PILOT`` check holds and B when one does not (the unmet checks are the reason).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.analysis.evidence import AnalysisSettings

_OPS: dict[str, Callable[[Any, Any], bool]] = {">=": operator.ge, ">": operator.gt, "<=": operator.le,
                                               "=": operator.eq}
PROFILE_MEASURES = ("ip_peers", "internal", "high_ports", "unknown")  # columns of profile(since, until)
STABILITY_MEASURES = ("meets_horizon", "stable")  # columns of stability(now, min_days, stable_days)


@dataclass(frozen=True)
class Check:
    """One comparison of a measure with a threshold: an ``AnalysisSettings`` field or a literal."""

    measure: str
    op: str
    threshold: str | int | bool
    unmet: str = ""  # pilot checks: why the namespace is not A, formatted with the measures

    def limit(self, cfg: AnalysisSettings | None) -> Any:
        if not isinstance(self.threshold, str):
            return self.threshold
        if cfg is None:
            raise ValueError(f"the check on {self.measure} needs the tier settings")
        return getattr(cfg, self.threshold)

    def holds(self, measures: Mapping[str, Any], cfg: AnalysisSettings | None) -> bool:
        return _OPS[self.op](measures[self.measure], self.limit(cfg))

    def sql(self, cfg: AnalysisSettings, profile: str, stability: str) -> str:
        table = stability if self.measure in STABILITY_MEASURES else profile
        limit = self.limit(cfg)
        literal = ("true" if limit else "false") if isinstance(limit, bool) else repr(limit)
        return f"{table}.{self.measure} {self.op} {literal}"


@dataclass(frozen=True)
class Rule:
    """A tier the first holding check gives, with the reason and advice shown to the user."""

    tier: str
    check: Check
    reason: str  # formatted with the measures, ``size`` and the thresholds
    advice: str


_D_ADVICE = "keep logging; allow by port or route through an egress gateway instead of per-IP rules"

BROAD: tuple[Rule, ...] = (
    Rule("D", Check("ip_peers", ">=", "d_min_external"),
         "{ip_peers} external IPs >= {d_min_external}: broad egress a static allowlist cannot hold (P2P-like)",
         _D_ADVICE),
    Rule("D", Check("high_ports", ">=", "d_min_high_ports"),
         "{high_ports} distinct external ports >= 1024 (>= {d_min_high_ports}): scattered high ports", _D_ADVICE),
    Rule("C", Check("ip_peers", ">", "b_max_external"),
         "{size}: moderate external fan-out (> {b_max_external})",
         "investigate each external IP; group provider ranges with --cidrs"),
    Rule("C", Check("internal", ">", "b_max_internal"),
         "{size}: internal fan-out above {b_max_internal}", "review the internal peers before allowlisting"),
)

# The stability checks compare with literals: policy refusals read them without the tier settings.
PILOT_STABILITY: tuple[Check, ...] = (
    Check("meets_horizon", "=", True, "observed {horizon_days} d, under the minimum"),
    Check("stable", "=", True, "new destination {days_since_new} d ago (unstable)"),
)
PILOT_SIZE: tuple[Check, ...] = (
    Check("ip_peers", "<=", "a_max_external", "{ip_peers} external > {a_max_external}"),
    Check("internal", "<=", "a_max_internal", "{internal} internal > {a_max_internal}"),
    Check("unknown", "=", 0, "{unknown} unattributed IPs"),
)
PILOT = PILOT_STABILITY + PILOT_SIZE
NO_STABILITY = "no stability data"  # a namespace without a stability row is never A

A_REASON = "{size}, stable and observed long enough: pilot candidate"
A_ADVICE = "generate a staged policy (flows policy --staged), then enforce"
B_REASON = "{size}: small egress; not A: {blockers}"
B_ADVICE = "allowlist per destination once stable and observed long enough"


def unmet(checks: tuple[Check, ...], measures: Mapping[str, Any], cfg: AnalysisSettings | None) -> list[str]:
    """The reasons of the checks that do not hold, in order."""
    values = {**measures, **(cfg.model_dump() if cfg is not None else {})}
    return [c.unmet.format(**values) for c in checks if not c.holds(measures, cfg)]


def tier_case_sql(cfg: AnalysisSettings, profile: str = "p", stability: str = "s") -> str:
    """The tier as a ClickHouse expression over a ``profile`` row joined with its ``stability`` row.

    A namespace the LEFT JOIN finds no stability row for reads false there, so it is B, as in Python.
    """
    arms = [f"{rule.check.sql(cfg, profile, stability)}, '{rule.tier}'" for rule in BROAD]
    pilot = "\n            AND ".join(c.sql(cfg, profile, stability) for c in PILOT)
    return "multiIf(" + ",\n          ".join([*arms, f"{pilot}, 'A'", "'B'"]) + ")"
