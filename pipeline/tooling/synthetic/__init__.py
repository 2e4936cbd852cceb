"""Deterministic synthetic corpora with independently computed ground truth.

End-to-end tests, ``flows demo`` and benchmarks need journals that look like a
real cluster's (kernel nf_log lines, journald cursors, a kubectl inventory with
finished pods, reused IPs, hostNetwork pods, dual-stack) *and* the answer they
should produce. The answer is computed from the model that generated the lines
(which pod sent what, when), never by parsing them, so a parser or registry bug
cannot hide by agreeing with itself.

The model: ~6 nodes (the first three carry an IPv6 pool, one runs a Calico
nftables build that prints ``calico-packetIN=`` at priority 6), ``namespaces``
namespaces with Deployments/StatefulSets/DaemonSets/CronJobs, each namespace
with an egress profile (peer namespaces, Services, external IPs, maybe a node
IP, maybe an unknown private IP). Scenarios included on purpose are listed in
``Corpus.scenarios`` with their distinct-entry counts.

The package follows that order: ``catalog`` (the fixed world), ``model`` (cluster objects),
``cluster`` (building the model), ``traffic`` (egress, ingress and host lines with their truth),
``noise`` (malformed and non-Calico entries), ``journal`` (journalctl JSON, repeats, syslog and
fluent-bit renderings), ``inventory`` (the kubectl snapshot) and ``corpus`` (``generate``).
"""

from pipeline.tooling.synthetic.catalog import CLIENTS_V4, DEFAULT_START, EXTERNAL_V4, EXTERNAL_V6
from pipeline.tooling.synthetic.corpus import Corpus, Expected, generate
from pipeline.tooling.synthetic.journal import to_fluentbit, to_syslog

__all__ = [
    "CLIENTS_V4",
    "DEFAULT_START",
    "EXTERNAL_V4",
    "EXTERNAL_V6",
    "Corpus",
    "Expected",
    "generate",
    "to_fluentbit",
    "to_syslog",
]
