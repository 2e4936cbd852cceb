"""The objects of a synthetic cluster: nodes, pods, services, egress destinations, journal entries.

Plain records shared by the builder, the traffic writer and the serialisers; the ground truth
is derived from these, never from the lines rendered out of them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Node:
    name: str
    idx: int
    ip: str
    external_ip: str | None
    v6: bool
    nft: bool
    mac: str
    gw_mac: str
    vxlan_mac: str
    boot_id: str
    machine_id: str
    seqnum_id: str
    boot_us: int
    uid: str
    created_us: int
    next_offset: int = 10
    seq: int = 0


@dataclass(slots=True)
class Pod:
    namespace: str
    name: str
    uid: str
    node: Node | None
    ip4: str | None
    ip6: str | None
    ip6x: str | None
    host_network: bool
    created_us: int
    start_us: int | None
    finish_us: int | None
    phase: str
    workload_kind: str
    workload: str
    owner_kind: str
    owner_name: str
    owner_uid: str
    labels: dict[str, str]
    image: str
    mac: str
    iface: str
    live_from: int = 0
    live_to: int = 1 << 62
    exit_code: int = 0

    def alive(self, ts_us: int) -> bool:
        return self.live_from <= ts_us < self.live_to


@dataclass(slots=True)
class Service:
    namespace: str
    name: str
    uid: str
    kind: str  # ClusterIP | Headless | ExternalName
    ip4: str | None
    ip6: str | None
    port: int
    proto: str
    selector: dict[str, str]
    created_us: int


@dataclass(slots=True)
class Dest:
    cls: str  # pod | svc | external | node | unknown
    key: str  # namespace for pod, ns/name for svc, normalized IP otherwise
    ip4: str | None
    ip6x: str | None
    proto: str
    port: int
    weight: float


@dataclass(slots=True)
class Entry:
    ts_us: int
    node: Node
    message: str
    priority: str
    kind: str  # calico | malformed | kernel | kubelet


def is_stable_target(p: Pod) -> bool:
    """A pod other pods and clients can address: running, on the pod network, with an IPv4 address."""
    return p.phase == "Running" and not p.host_network and p.ip4 is not None
