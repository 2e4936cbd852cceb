"""A corpus and the answer it implies, and the one call that builds both.

The draw order (cluster, traffic, noise, journal, duplicates, inventory) is part of the
contract: the same seed must give the same corpus in any process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from pipeline.tooling.synthetic.catalog import DEFAULT_START
from pipeline.tooling.synthetic.cluster import Cluster
from pipeline.tooling.synthetic.inventory import inventory
from pipeline.tooling.synthetic.journal import duplicate
from pipeline.tooling.synthetic.journal import journal as render_journal
from pipeline.tooling.synthetic.noise import emit_noise
from pipeline.tooling.synthetic.traffic import Traffic


@dataclass
class Expected:
    """What a correct pipeline must report for a corpus."""

    fanout: dict[str, dict[str, int]]
    records: int
    rejected: int
    ignored: int
    unowned_sources: int


@dataclass
class Corpus:
    """A generated inventory + journal and the answer computed from the model."""

    inventory: dict
    journal: list[str]
    expected: Expected
    start_ns: int
    end_ns: int
    scenarios: dict[str, int] = field(default_factory=dict)
    """Distinct entries per deliberate scenario (``duplicates``: extra repeated lines)."""


def generate(
    seed: int = 1,
    namespaces: int = 40,
    records: int = 30_000,
    start: datetime | None = None,
    duration_s: int = 6 * 3600,
    *,
    nft_prefix_nodes: int = 1,
) -> Corpus:
    """Build a corpus: inventory snapshot at the end of the window, shipped journal, expected answer.

    ``records`` is the exact number of distinct parseable Calico records; malformed lines (~0.1 %),
    non-Calico entries (~1 %) and duplicates come on top. ``nft_prefix_nodes`` nodes print the
    nftables-mode ``calico-packetIN=`` variant at priority 6 (0 turns it off).
    """
    c = Cluster(seed, namespaces, records, start or DEFAULT_START, duration_s, nft_prefix_nodes)
    c.build_nodes()
    apps = c.build_namespaces()
    c.build_workloads(apps)
    c.build_specials(apps)
    c.build_profiles(apps)
    t = Traffic(c)
    t.emit_records()
    emit_noise(t)
    journal = duplicate(c, render_journal(c, t.entries))
    kinds = [e.kind for e in t.entries]
    expected = Expected(
        fanout=t.fanout(),
        records=kinds.count("calico"),
        rejected=kinds.count("malformed"),
        ignored=kinds.count("kernel") + kinds.count("kubelet"),
        unowned_sources=c.scen.get("unowned", 0),
    )
    return Corpus(
        inventory=inventory(c),
        journal=journal,
        expected=expected,
        start_ns=c.start_us * 1000,
        end_ns=c.end_us * 1000,
        scenarios=dict(sorted(c.scen.items())),
    )
