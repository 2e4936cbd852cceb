"""Kubernetes objects -> ownership claims (``OwnerEvent``), and the owners-topic codec.

Pure, no I/O: the inventory loader (a ``kubectl get -o json`` dump) and the k8s
watcher both go through here, so an IP gets the same claim whichever path saw it.
One event is one claim of one IP by one object over ``[valid_from, valid_to)``;
the registry, not this module, decides who wins when claims overlap.

Rules worth knowing (ARCHITECTURE principle 3):

- Every other pod also makes an *identity* claim (``ip == ""``) from its creation, Pending
  and IP-less included: its Calico interface name names it before the kubelet reports an IP.
- hostNetwork pods claim nothing: they share the node IP, which the Node claims, and their
  packets do not leave through a Calico interface.
- A Succeeded/Failed pod still lists its IP in ``status`` but no longer owns it:
  its claim is closed at the last container finish (or last condition change);
  with neither known it claims nothing, since it cannot own an IP "now".
- Terminating objects (``deletionTimestamp`` set) still own their IPs.
- A malformed item is skipped with a warning, never an exception, so one odd
  object cannot stop an inventory load or a watch.
- An EndpointSlice of a Service (label ``kubernetes.io/service-name``) makes one ``endpoint``
  claim per backing address and port: "ip:port/protocol backs Service S". Under kube-proxy's
  iptables/nftables modes and Calico eBPF, Service traffic reaches Calico already DNATed to a
  backend pod, and these claims let enrichment name the Service anyway. An endpoint backs its
  Service while ``ready`` is not false, and also while it is terminating but still ``serving``
  (kube-proxy keeps sending to such endpoints while no ready one is left, and conntrack keeps
  DNATing established connections); ``ready: false`` otherwise (a failing readiness probe)
  ends the claim. Headless Services' slices count too (see docs/attribution.md).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from ipaddress import ip_address
from typing import Any

import orjson

from pipeline.basics.timespec import parse_rfc3339_ns
from pipeline.core.models import OwnerEvent, Progress

MAX_NS = 2**63 - 1  # ns fields are Int64 in ClickHouse and on the wire
MAX_EVENT_BYTES = 1 << 20  # Kafka's default max message size; a bigger value is not ours
KINDS = frozenset({"pod", "service", "node", "endpoint"})
# Object kind -> the kind of the claims it makes.
CLAIM_KIND = {"Pod": "pod", "Service": "service", "Node": "node", "EndpointSlice": "endpoint"}
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ENDPOINT_PROTOCOLS = frozenset({"TCP", "UDP", "SCTP"})

# (kind, namespace, name) of a ReplicaSet or Job -> the workload that controls it.
OwnersIndex = Mapping[tuple[str, str, str], tuple[str, str]]

# Kubernetes names pod-template hashes with rand.SafeEncodeString (no vowels, no 0/1/3);
# releases before 1.11 used the decimal uint32. Either way, never a word like "frontend".
_RS_HASH_SUFFIX = re.compile(r"(.+)-([bcdfghjklmnpqrstvwxz0-9]{5,10})")
# The CronJob controller names jobs "<cronjob>-<scheduled time in minutes since epoch>".
_CRONJOB_JOB = re.compile(r"(.+)-(\d{8,})")
_EVENT_KEYS = (
    "ip", "kind", "namespace", "name", "uid", "workload_kind", "workload", "node", "labels",
    "valid_from_ns", "valid_to_ns", "observed_ns", "source",
)  # fmt: skip
_JSON_TYPES: dict[type, str] = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    type(None): "null",
}
_STR_KEYS = ("ip", "kind", "namespace", "name", "uid", "workload_kind", "workload", "node", "source")


def build_owners_index(items: Iterable[Any], default_kind: str = "") -> dict[tuple[str, str, str], tuple[str, str]]:
    """Map ReplicaSets and Jobs to the workload controlling them, to beat the name heuristics.

    ``default_kind`` is the kind of items that omit theirs (a ``ReplicaSetList``). Malformed
    ones are left out: their pods fall back to the heuristics, which is all they would get.
    """
    index: dict[tuple[str, str, str], tuple[str, str]] = {}
    for item in items:
        if not isinstance(item, dict):
            continue
        kind = item.get("kind", default_kind)
        if kind not in ("ReplicaSet", "Job"):
            continue
        try:
            meta = _get(item, "metadata", dict, "") or {}
            name = _get(meta, "name", str, "metadata")
            namespace = _get(meta, "namespace", str, "metadata")
            parent = _controller_ref(meta)
        except ValueError:
            continue
        if name and namespace:
            index[(kind, namespace, name)] = parent or (kind, name)
    return index


def events_from_object(
    obj: dict,
    observed_ns: int,
    source: str = "inventory",
    owners_index: OwnersIndex | None = None,
    warnings: list[str] | None = None,
) -> list[OwnerEvent]:
    """Return the claims one Kubernetes object makes (none for kinds that own no IP).

    Raises ValueError if the object is malformed. An unusable IP is skipped, with a
    message appended to ``warnings`` when given, and the object's other IPs still count.
    """
    if not isinstance(obj, dict):
        raise ValueError(f"object is {type(obj).__name__}, not a mapping")
    kind = obj.get("kind")
    if not isinstance(kind, str):
        raise ValueError("object has no kind")
    return _events(obj, kind, observed_ns, source, owners_index, warnings if warnings is not None else [])


def events_from_list(doc: dict, observed_ns: int, source: str = "inventory") -> tuple[list[OwnerEvent], list[str]]:
    """Return the claims of every object in a ``kubectl get … -o json`` document, and warnings.

    Accepts a ``List`` (items carry their kind), a typed list such as ``PodList`` (items
    may omit it) or a single object. Malformed items are skipped with a warning; ValueError
    only when ``doc`` is none of those shapes.
    """
    if not isinstance(doc, dict):
        raise ValueError(f"document is {type(doc).__name__}, not a Kubernetes List or object")
    doc_kind = doc.get("kind")
    items = doc.get("items")
    if items is None and isinstance(doc_kind, str) and doc_kind and not doc_kind.endswith("List"):
        items = [doc]
    if not isinstance(items, list):
        raise ValueError("document is neither a Kubernetes List nor an object")
    item_kind = doc_kind[: -len("List")] if isinstance(doc_kind, str) and doc_kind.endswith("List") else ""

    index = build_owners_index(items, item_kind)
    events: list[OwnerEvent] = []
    warnings: list[str] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            warnings.append(f"item {i}: skipped, {_json_type(item)} is not an object")
            continue
        kind = item.get("kind", item_kind)
        if not isinstance(kind, str) or not kind:
            warnings.append(f"item {i}: skipped, no kind")
            continue
        item_warnings: list[str] = []
        try:
            events.extend(_events(item, kind, observed_ns, source, index, item_warnings))
        except ValueError as exc:
            item_warnings.append(f"skipped, {exc}")
        warnings.extend(f"item {i} ({_describe(item, kind)}): {w}" for w in item_warnings)
    return events, warnings


def event_to_json(ev: OwnerEvent) -> bytes:
    """Encode one claim as the owners-topic message value (compact JSON).

    Raises ValueError for an event that ``event_from_json`` would refuse, so nothing
    unreadable is ever published.
    """
    _check(ev)
    extra = {"port": ev.port, "protocol": ev.protocol, "target": ev.target} if ev.kind == "endpoint" else {}
    return orjson.dumps(
        {
            "ip": ev.ip,
            "kind": ev.kind,
            "namespace": ev.namespace,
            "name": ev.name,
            "uid": ev.uid,
            "workload_kind": ev.workload_kind,
            "workload": ev.workload,
            "node": ev.node,
            "labels": ev.labels,
            "valid_from_ns": ev.valid_from_ns,
            "valid_to_ns": ev.valid_to_ns,
            "observed_ns": ev.observed_ns,
            "source": ev.source,
            **extra,
        }
    )


def event_from_json(data: bytes | str) -> OwnerEvent:
    """Decode one owners-topic message value; ValueError saying what is wrong otherwise.

    Stricter than JSON: duplicate keys (which parsers resolve differently), trailing data
    and non-canonical IP text are refused, as is anything ``schemas/k8s.owners.v1.json``
    refuses. Unknown extra keys are ignored, so producers can add fields compatibly.
    """
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if len(raw) > MAX_EVENT_BYTES:
        raise ValueError(f"owner event is {len(raw)} bytes, more than {MAX_EVENT_BYTES}")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"owner event is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"owner event is a JSON {type(doc).__name__}, not an object")
    # Canonical input (what event_to_json writes) re-encodes to itself and so cannot hold a
    # duplicate key; only other spellings pay for the slower check.
    try:
        canonical = orjson.dumps(doc) == raw
    except orjson.JSONEncodeError:  # nested deeper than orjson writes: certainly not canonical
        canonical = False
    if not canonical:
        _reject_duplicate_keys(raw)
    missing = [k for k in _EVENT_KEYS if k not in doc]
    if missing:
        raise ValueError(f"owner event lacks {', '.join(missing)}")
    optional = {k: doc[k] for k in ("port", "protocol", "target") if k in doc}  # endpoint claims only
    return _check(OwnerEvent(**{k: doc[k] for k in _EVENT_KEYS}, **optional))


def progress_to_json(mark: Progress) -> bytes:
    """Encode a completeness watermark as an owners-topic message value."""
    _check_progress(mark)
    return orjson.dumps({"progress": True, "source": mark.source, "complete_to_ns": mark.complete_to_ns,
                         "observed_ns": mark.observed_ns})


def owner_message_from_json(data: bytes | str) -> OwnerEvent | Progress:
    """Decode any owners-topic message value: a claim or a watermark; ValueError otherwise."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if len(raw) <= 4096 and b'"progress"' in raw:
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"owner message is not valid JSON: {exc}") from None
        if isinstance(doc, dict) and doc.get("progress") is True:
            _reject_duplicate_keys(raw)
            try:
                mark = Progress(source=doc["source"], complete_to_ns=doc["complete_to_ns"],
                                observed_ns=doc["observed_ns"])
            except KeyError as exc:
                raise ValueError(f"progress message lacks {exc.args[0]}") from None
            return _check_progress(mark)
    return event_from_json(raw)


def _check_progress(mark: Progress) -> Progress:
    if not isinstance(mark.source, str) or not 0 < len(mark.source) <= 200:
        raise ValueError("progress source must be a non-empty string of at most 200 characters")
    for key in ("complete_to_ns", "observed_ns"):
        value = getattr(mark, key)
        if type(value) is not int or not 0 <= value <= MAX_NS:
            raise ValueError(f"progress field {key} must be an integer in [0, 2**63-1]")
    return mark


# -- what the watcher keeps of an object ------------------------------------------------------

# The fields the claim rules read (and the watch needs): everything else of a pod (~40 KiB with
# managed fields, container specs and statuses) is dropped as each list page arrives, so a re-list
# of tens of thousands of pods holds kilobytes per pod, not tens of them.
_KEEP_META = ("name", "namespace", "uid", "labels", "ownerReferences", "creationTimestamp", "resourceVersion")
_KEEP_SPEC = ("hostNetwork", "nodeName", "clusterIP", "clusterIPs", "externalIPs")
_KEEP_STATUS = ("phase", "podIP", "podIPs", "startTime", "addresses")
_KEEP_ENDPOINT = ("addresses", "conditions", "nodeName")


def _pick(value: Any, keys: tuple[str, ...]) -> Any:
    return {k: value[k] for k in keys if k in value} if isinstance(value, dict) else value


def _each(value: Any, slim: Any) -> Any:
    return [slim(v) if isinstance(v, dict) else v for v in value] if isinstance(value, list) else value


def _slim_container_status(cs: dict) -> dict:
    state = cs.get("state")
    if isinstance(state, dict):
        state = {"terminated": _pick(state["terminated"], ("finishedAt",))} if "terminated" in state else {}
    return {} if "state" not in cs else {"state": state}


def _slim_endpoint(ep: dict) -> dict:
    out = _pick(ep, _KEEP_ENDPOINT)
    if "targetRef" in ep:
        out["targetRef"] = _pick(ep["targetRef"], ("kind", "name", "namespace"))
    return out


def slim_object(obj: Any) -> Any:
    """``obj`` reduced to what ``events_from_object`` and the tracker read: the same claims, the
    same warnings, a fraction of the memory. Anything of an unexpected shape is kept as it is."""
    if not isinstance(obj, dict):
        return obj
    out = {k: obj[k] for k in ("kind", "apiVersion", "addressType", "ports") if k in obj}
    if "endpoints" in obj:
        out["endpoints"] = _each(obj["endpoints"], _slim_endpoint)
    if "metadata" in obj:
        meta = obj["metadata"]
        out["metadata"] = _pick(meta, _KEEP_META)
        if isinstance(meta, dict) and "ownerReferences" in meta:
            out["metadata"]["ownerReferences"] = _each(
                meta["ownerReferences"], lambda r: _pick(r, ("kind", "name", "controller")))
    if "spec" in obj:
        out["spec"] = _pick(obj["spec"], _KEEP_SPEC)
    if "status" in obj:
        status = obj["status"]
        out["status"] = _pick(status, _KEEP_STATUS)
        if isinstance(status, dict):
            for key in ("containerStatuses", "initContainerStatuses"):
                if key in status:
                    out["status"][key] = _each(status[key], _slim_container_status)
            if "conditions" in status:
                out["status"]["conditions"] = _each(status["conditions"], lambda c: _pick(c, ("lastTransitionTime",)))
    return out


# -- objects -> events ---------------------------------------------------------------------------


def _events(
    obj: dict, kind: str, observed_ns: int, source: str, index: OwnersIndex | None, warn: list[str]
) -> list[OwnerEvent]:
    if kind == "EndpointSlice":
        return _endpoint_events(obj, observed_ns, source, warn)
    if kind not in ("Pod", "Service", "Node"):
        return []
    meta = _get(obj, "metadata", dict, "")
    if meta is None:
        raise ValueError("no metadata")
    name = _get(meta, "name", str, "metadata")
    if not name:
        raise ValueError("no metadata.name")
    namespace = "" if kind == "Node" else _get(meta, "namespace", str, "metadata")
    if kind != "Node" and not namespace:
        raise ValueError("no metadata.namespace")
    uid = _get(meta, "uid", str, "metadata") or f"{kind.lower()}/{namespace}/{name}"
    labels = _labels(meta)
    spec = _get(obj, "spec", dict, "") or {}
    status = _get(obj, "status", dict, "") or {}
    valid_to = None
    if kind == "Pod":
        if _get(spec, "hostNetwork", bool, "spec"):
            return []  # the node's IP: the Node claims it
        ips = _normalize_ips(_pod_ips(status), warn)
        created = _time(meta, "creationTimestamp", "metadata")
        valid_from = _time(status, "startTime", "status")
        if valid_from is None:
            valid_from = created
        if valid_from is None:
            raise ValueError("neither status.startTime nor metadata.creationTimestamp")
        if _get(status, "phase", str, "status") in ("Succeeded", "Failed"):
            valid_to = _finished_at(status)
            if valid_to is None:
                return []
            if valid_to < valid_from:
                raise ValueError("pod finished before it started")
        # The identity claim: the pod's interface names it from creation on, before any IP.
        ips = ["", *ips]
        workload_kind, workload = _pod_workload(meta, name, namespace, labels, index)
        node = _get(spec, "nodeName", str, "spec") or ""
    else:
        ips = _normalize_ips(_service_ips(spec) if kind == "Service" else _node_ips(status), warn)
        if not ips:
            return []
        valid_from = _time(meta, "creationTimestamp", "metadata")
        if valid_from is None:
            raise ValueError("no metadata.creationTimestamp")
        workload_kind, workload = kind, name
        node = name if kind == "Node" else ""
    return [
        _check(
            OwnerEvent(
                ip=ip,
                kind=kind.lower(),
                namespace=namespace,
                name=name,
                uid=uid,
                valid_from_ns=min(valid_from, created) if not ip and created is not None else valid_from,
                valid_to_ns=valid_to,
                observed_ns=observed_ns,
                workload_kind=workload_kind,
                workload=workload,
                node=node,
                labels=labels,
                source=source,
            )
        )
        for ip in ips
    ]


def _endpoint_events(obj: dict, observed_ns: int, source: str, warn: list[str]) -> list[OwnerEvent]:
    """One claim per backing address and port of a Service's EndpointSlice (none for other slices)."""
    meta = _get(obj, "metadata", dict, "")
    if meta is None:
        raise ValueError("no metadata")
    namespace = _get(meta, "namespace", str, "metadata")
    service = _labels(meta).get(SERVICE_NAME_LABEL)
    if not service or _get(obj, "addressType", str, "") == "FQDN":
        return []  # not a Service's slice (mirrored or custom), or names rather than addresses
    if not namespace:
        raise ValueError("no metadata.namespace")
    uid = _get(meta, "uid", str, "metadata") or f"endpointslice/{namespace}/{_get(meta, 'name', str, 'metadata')}"
    valid_from = _time(meta, "creationTimestamp", "metadata")
    if valid_from is None:
        raise ValueError("no metadata.creationTimestamp")
    ports = []
    for p in _get(obj, "ports", list, "") or []:
        if not isinstance(p, dict):
            raise ValueError("ports holds a non-object")
        port = _get(p, "port", int, "ports") or 0  # no port: every port (a selectorless Service's choice)
        protocol = _get(p, "protocol", str, "ports") or "TCP"
        if not 0 <= port <= 65535 or protocol not in ENDPOINT_PROTOCOLS:
            warn.append(f"port {port}/{protocol} skipped")
            continue
        ports.append((port, protocol))
    events = []
    for ep in _get(obj, "endpoints", list, "") or []:
        if not isinstance(ep, dict):
            raise ValueError("endpoints holds a non-object")
        if not _backs(_get(ep, "conditions", dict, "endpoints") or {}):
            continue
        ref = _get(ep, "targetRef", dict, "endpoints") or {}
        target = ref.get("name") if ref.get("kind") == "Pod" and isinstance(ref.get("name"), str) else ""
        node = _get(ep, "nodeName", str, "endpoints") or ""
        for ip in _normalize_ips(_get(ep, "addresses", list, "endpoints") or [], warn):
            events.extend(_check(OwnerEvent(
                ip=ip, kind="endpoint", namespace=namespace, name=service, uid=uid, valid_from_ns=valid_from,
                valid_to_ns=None, observed_ns=observed_ns, workload_kind="Service", workload=service, node=node,
                source=source, port=port, protocol=protocol, target=target)) for port, protocol in ports)
    return events


def _backs(conditions: dict) -> bool:
    """Whether an endpoint receives the Service's traffic: ready (unset means ready), or terminating
    but still serving (kube-proxy's fallback, and conntrack keeps established connections on it)."""
    if conditions.get("ready") is not False:
        return True
    return conditions.get("serving") is True and conditions.get("terminating") is True


def _pod_ips(status: dict) -> list[Any]:
    """All of a dual-stack pod's IPs (``podIPs``), else the single ``podIP``."""
    raw = []
    for entry in _get(status, "podIPs", list, "status") or []:
        if not isinstance(entry, dict):
            raise ValueError("status.podIPs holds a non-object")
        raw.append(entry.get("ip"))
    return raw or [ip for ip in [_get(status, "podIP", str, "status")] if ip]


def _service_ips(spec: dict) -> list[Any]:
    cluster_ips = _get(spec, "clusterIPs", list, "spec") or [_get(spec, "clusterIP", str, "spec")]
    headless = ("None", "", None)  # headless and ExternalName services have no cluster IP
    return [ip for ip in cluster_ips if ip not in headless] + (_get(spec, "externalIPs", list, "spec") or [])


def _node_ips(status: dict) -> list[Any]:
    raw = []
    for address in _get(status, "addresses", list, "status") or []:
        if not isinstance(address, dict):
            raise ValueError("status.addresses holds a non-object")
        if address.get("type") in ("InternalIP", "ExternalIP"):
            raw.append(address.get("address"))
    return raw


def _finished_at(status: dict) -> int | None:
    """When a finished pod let go of its IP: last container finish, else last condition change."""
    finished = []
    for key in ("containerStatuses", "initContainerStatuses"):
        for cs in _get(status, key, list, "status") or []:
            if not isinstance(cs, dict):
                raise ValueError(f"status.{key} holds a non-object")
            terminated = _get(_get(cs, "state", dict, key) or {}, "terminated", dict, f"{key}.state") or {}
            t = _time(terminated, "finishedAt", f"{key}.state.terminated")
            if t is not None:
                finished.append(t)
    if finished:
        return max(finished)
    changed = []
    for cond in _get(status, "conditions", list, "status") or []:
        if not isinstance(cond, dict):
            raise ValueError("status.conditions holds a non-object")
        t = _time(cond, "lastTransitionTime", "status.conditions")
        if t is not None:
            changed.append(t)
    return max(changed) if changed else None


def _pod_workload(
    meta: dict, name: str, namespace: str, labels: dict[str, str], index: OwnersIndex | None
) -> tuple[str, str]:
    ref = _controller_ref(meta)
    if ref is None:
        return "Pod", name
    kind, owner = ref
    if kind == "Node":  # mirror pod of a static pod: the kubelet, not a controller, runs it
        return "StaticPod", name
    if index is not None and (kind, namespace, owner) in index:
        return index[(kind, namespace, owner)]
    if kind == "ReplicaSet":
        template_hash = labels.get("pod-template-hash")
        if template_hash and owner.endswith("-" + template_hash):
            return "Deployment", owner[: -len(template_hash) - 1]
        m = _RS_HASH_SUFFIX.fullmatch(owner)
        return ("Deployment", m[1]) if m else ("ReplicaSet", owner)
    if kind == "Job":
        m = _CRONJOB_JOB.fullmatch(owner)
        return ("CronJob", m[1]) if m else ("Job", owner)
    return kind, owner


def _controller_ref(meta: dict) -> tuple[str, str] | None:
    """The ownerReference that controls the object (controller=true), else the first one."""
    refs = _get(meta, "ownerReferences", list, "metadata") or []
    for ref in refs:
        if not isinstance(ref, dict):
            raise ValueError("metadata.ownerReferences holds a non-object")
        if not isinstance(ref.get("kind"), str) or not isinstance(ref.get("name"), str):
            raise ValueError("metadata.ownerReferences entry without kind and name")
    if not refs:
        return None
    ref = next((r for r in refs if r.get("controller") is True), refs[0])
    return ref["kind"], ref["name"]


def _labels(meta: dict) -> dict[str, str]:
    labels = _get(meta, "labels", dict, "metadata") or {}
    if not all(isinstance(v, str) for v in labels.values()):
        raise ValueError("metadata.labels holds a non-string value")
    return labels


def _normalize_ips(values: list[Any], warn: list[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        try:
            ip = _canonical_ip(value)
        except ValueError as exc:
            warn.append(f"IP skipped: {exc}")
            continue
        if ip not in out:
            out.append(ip)
    return out


def stored_ip_text(stored: str) -> str:
    """An address as ClickHouse prints a stored IPv6 value (``toString``), as the registry keys it:
    IPv4, stored IPv4-mapped, as its dotted quad; IPv6 in the form claims give it (``_canonical_ip``)."""
    if ":" not in stored:
        return stored
    if stored.startswith("::ffff:") and "." in stored:
        return stored[7:]
    return _canonical_stored(stored)


@functools.lru_cache(maxsize=1 << 14)
def _canonical_stored(text: str) -> str:
    """Cached: stored IPv6 addresses repeat (a repair page, a page of claims)."""
    return str(ip_address(text))


def _canonical_ip(value: Any) -> str:
    if not isinstance(value, str) or "%" in value:
        raise ValueError(f"{value!r} is not an IP address")
    try:
        return str(ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def _time(obj: dict, key: str, where: str) -> int | None:
    value = _get(obj, key, str, where)
    if value is None:
        return None
    try:
        return parse_rfc3339_ns(value)
    except ValueError as exc:
        raise ValueError(f"{where}.{key}: {exc}") from None


def _get(obj: dict, key: str, typ: type, where: str) -> Any:
    """``obj[key]`` if it has type ``typ``, None when absent or null, ValueError otherwise."""
    value = obj.get(key)
    if value is None or isinstance(value, typ):
        return value
    path = f"{where}.{key}" if where else key
    raise ValueError(f"{path} is {_json_type(value)}, expected {_JSON_TYPES[typ]}")


def _describe(item: dict, kind: str) -> str:
    meta = item.get("metadata")
    if not isinstance(meta, dict):
        return kind
    ns, name = meta.get("namespace"), meta.get("name")
    name = name if isinstance(name, str) and name else "?"
    return f"{kind} {ns}/{name}" if isinstance(ns, str) and ns else f"{kind} {name}"


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


# -- codec ---------------------------------------------------------------------------------------


def _check(ev: OwnerEvent) -> OwnerEvent:
    """Return ``ev`` if it is a claim the owners topic may carry, else raise ValueError.

    The same rules as the JSON Schema, plus what it cannot say: canonical IP text,
    integers that are not floats, valid_to not before valid_from.
    """
    for key in _STR_KEYS:
        value = getattr(ev, key)
        if not isinstance(value, str):
            raise ValueError(f"owner event field {key} must be a string, not {_json_type(value)}")
    if ev.kind not in KINDS:
        raise ValueError(f"owner event kind {ev.kind!r} is not one of pod, service, node, endpoint")
    _check_endpoint(ev)
    if not ev.name or not ev.uid or not ev.source:
        raise ValueError("owner event name, uid and source must not be empty")
    if (ev.kind == "node") != (ev.namespace == ""):
        raise ValueError(f"owner event of kind {ev.kind} with namespace {ev.namespace!r}")
    if ev.ip == "" and ev.kind == "pod":
        pass  # a pod's identity claim: no IP, only its interface
    elif (canonical := _canonical_ip(ev.ip)) != ev.ip:
        raise ValueError(f"owner event ip {ev.ip!r} is not in canonical form {canonical!r}")
    for key in ("valid_from_ns", "observed_ns", "valid_to_ns"):
        value = getattr(ev, key)
        if key == "valid_to_ns" and value is None:
            continue
        if type(value) is not int:
            raise ValueError(f"owner event field {key} must be an integer, not {_json_type(value)}")
        if not 0 <= value <= MAX_NS:
            raise ValueError(f"owner event field {key} is {value}, outside [0, 2**63-1]")
    if ev.valid_to_ns is not None and ev.valid_to_ns < ev.valid_from_ns:
        raise ValueError("owner event valid_to_ns is before valid_from_ns")
    if not isinstance(ev.labels, dict):
        raise ValueError(f"owner event field labels must be an object, not {_json_type(ev.labels)}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in ev.labels.items()):
        raise ValueError("owner event labels must map strings to strings")
    return ev


def _check_endpoint(ev: OwnerEvent) -> None:
    """Port, protocol and target belong to endpoint claims, and every endpoint claim has them and an IP."""
    if type(ev.port) is not int or not isinstance(ev.protocol, str) or not isinstance(ev.target, str):
        raise ValueError("owner event port must be an integer, protocol and target strings")
    if ev.kind != "endpoint":
        if ev.port or ev.protocol or ev.target:
            raise ValueError(f"owner event of kind {ev.kind} with a port, protocol or target")
        return
    if not 0 <= ev.port <= 65535 or ev.protocol not in ENDPOINT_PROTOCOLS:
        raise ValueError(f"endpoint claim port {ev.port}/{ev.protocol} is not a port 0-65535 of TCP, UDP or SCTP")
    if not ev.ip:
        raise ValueError("endpoint claim without an ip")


def _reject_duplicate_keys(raw: bytes) -> None:
    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"owner event has duplicate key {key!r}")
            seen.add(key)
        return dict(pairs)

    try:
        json.loads(raw, object_pairs_hook=pairs_hook)
    except RecursionError:
        raise ValueError("owner event is nested too deeply") from None
