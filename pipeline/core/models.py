"""Plain data types shared by the pure core and the adapters.

Every stage speaks in these types: shippers produce ``RawRecord``s, the parser
turns a message into a ``PacketLog``, the inventory and the k8s watcher produce
``OwnerEvent``s, the registry answers with ``Owner``s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(slots=True)
class RawRecord:
    """One log record as a shipper saw it, before parsing.

    ``record_id`` is the record's stable identity (32 hex chars): the same
    journal entry or Loki entry always gets the same id, whichever shipper
    sends it and however often, which is what makes replays harmless.
    """

    record_id: str
    ts_ns: int
    host: str
    message: str
    source: str
    labels: dict[str, str] | None = None
    orig_len: int | None = None  # set when the message travelled truncated (too long to keep whole)


@dataclass(slots=True)
class RecordColumns:
    """The records of a fetch as parallel lists, as the columnar envelope decoder gives them.

    A ``RawRecord`` is built only for the few records that need one (``record``): those the
    reference path decides, and those held for ownership.
    """

    record_id: list[str]
    ts_ns: list[int]
    host: list[str]
    message: list[str]
    source: list[str]
    orig_len: list[int | None] | None = None  # None: no record travelled truncated
    records: Sequence[RawRecord] | None = None  # the objects, when the columns were made from them

    @classmethod
    def of(cls, records: Sequence[RawRecord]) -> RecordColumns:
        return cls([r.record_id for r in records], [r.ts_ns for r in records], [r.host for r in records],
                   [r.message for r in records], [r.source for r in records], [r.orig_len for r in records],
                   records)

    def __len__(self) -> int:
        return len(self.record_id)

    def record(self, i: int) -> RawRecord:
        if self.records is not None:
            return self.records[i]
        orig_len = None if self.orig_len is None else self.orig_len[i]
        return RawRecord(self.record_id[i], self.ts_ns[i], self.host[i], self.message[i], self.source[i], None,
                         orig_len)


@dataclass(slots=True)
class PacketLog:
    """A parsed Calico packet-log line (the kernel nf_log fields we use)."""

    in_iface: str
    out_iface: str
    src: str
    dst: str
    family: int
    proto: str
    src_port: int | None = None
    dst_port: int | None = None
    length: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    tcp_flags: str = ""

    def direction(self, iface_prefix: str = "cali") -> str:
        """``egress`` when the packet left a local workload, ``ingress`` when entering one.

        ``iface_prefix`` is Felix's interface prefix (FLOWS_IFACE_PREFIX).
        """
        if self.in_iface.startswith(iface_prefix):
            return "egress"
        if self.out_iface.startswith(iface_prefix):
            return "ingress"
        return "other"


@dataclass(slots=True, frozen=True)
class Owner:
    """Who held an IP (or a cali interface) at some moment."""

    kind: str  # pod | service | node
    namespace: str = ""
    name: str = ""
    uid: str = ""
    workload_kind: str = ""
    workload: str = ""
    node: str = ""
    iface: str = field(default="", compare=False)  # a pod's Calico interface name (the registry fills it in)


@dataclass(slots=True)
class OwnerEvent:
    """One ownership claim of one IP, as published on the owners topic.

    A pod also makes one claim with ``ip == ""``: its *identity* claim, from its creation
    (Pending and IP-less included) to its end. It claims no IP, only the pod's Calico
    interface name, which names the sending pod before the kubelet reports its IP.

    ``valid_to`` is None while the claim is open. The same (kind, uid, ip)
    published again replaces the earlier claim when its ``observed_ns`` is newer;
    equal observations are broken on content (a close beats a reopen), so a
    closing event and a replayed topic converge whatever the delivery order.
    """

    ip: str
    kind: str
    namespace: str
    name: str
    uid: str
    valid_from_ns: int
    valid_to_ns: int | None
    observed_ns: int
    workload_kind: str = ""
    workload: str = ""
    node: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    source: str = "inventory"
    # An ``endpoint`` claim ("ip:port/protocol backs Service namespace/name", uid = the EndpointSlice's)
    # also says which port and protocol, and which pod it points at (targetRef, "" when none).
    port: int = 0
    protocol: str = ""
    target: str = ""

    @property
    def key(self) -> str:
        """Compaction key on the owners topic: one claim per (kind, uid, ip), per port and protocol for endpoints."""
        if self.kind == "endpoint":
            return f"endpoint/{self.uid}/{self.ip}/{self.port}/{self.protocol}"
        return f"{self.kind}/{self.uid}/{self.ip}"

    def owner(self) -> Owner:
        return Owner(
            kind=self.kind,
            namespace=self.namespace,
            name=self.name,
            uid=self.uid,
            workload_kind=self.workload_kind,
            workload=self.workload,
            node=self.node,
        )


@dataclass(slots=True, frozen=True)
class Progress:
    """A completeness watermark on the owners topic: ``source`` has published every
    ownership change up to ``complete_to_ns`` (compaction key ``progress/<source>``)."""

    source: str
    complete_to_ns: int
    observed_ns: int

    @property
    def key(self) -> str:
        return f"progress/{self.source}"
