"""The inventory snapshot: namespaces, nodes, pods and services as the Kubernetes API returns them."""

from __future__ import annotations

from pipeline.basics.timespec import format_rfc3339_ns
from pipeline.tooling.synthetic.cluster import Cluster
from pipeline.tooling.synthetic.model import Pod


def _rfc3339(us: int) -> str:
    return format_rfc3339_ns(us * 1000, digits=0)


def inventory(c: Cluster) -> dict:
    """The cluster as `kubectl get ... -o json` lists it at the end of the window."""
    items: list[dict] = []
    for ns in c.ns_names:
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": ns,
                    "uid": c.uid(),
                    "resourceVersion": str(c.rng.randint(100, 9999)),
                    "creationTimestamp": _rfc3339(c.ns_created[ns]),
                    "labels": c.ns_labels[ns],
                },
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            }
        )
    for n in c.nodes:
        addrs = [{"type": "InternalIP", "address": n.ip}]
        if n.external_ip:
            addrs.append({"type": "ExternalIP", "address": n.external_ip})
        addrs.append({"type": "Hostname", "address": n.name})
        b = n.boot_id
        cidrs = [f"10.244.{n.idx * 16}.0/20"] + ([f"fd00:10:244:{n.idx:x}::/64"] if n.v6 else [])
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": n.name,
                    "uid": n.uid,
                    "creationTimestamp": _rfc3339(n.created_us),
                    "resourceVersion": str(c.rng.randint(10000, 99999)),
                    "labels": {
                        "kubernetes.io/hostname": n.name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "node.kubernetes.io/instance-type": "m6i.xlarge",
                    },
                    "annotations": {
                        "projectcalico.org/IPv4Address": f"{n.ip}/24",
                        "projectcalico.org/IPv4VXLANTunnelAddr": f"10.244.{n.idx * 16}.1",
                    },
                },
                "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs},
                "status": {
                    "addresses": addrs,
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "lastTransitionTime": _rfc3339(n.boot_us + 60_000_000),
                        }
                    ],
                    "nodeInfo": {
                        "bootID": f"{b[:8]}-{b[8:12]}-{b[12:16]}-{b[16:20]}-{b[20:]}",
                        "machineID": n.machine_id,
                        "kernelVersion": "6.8.0-1019-aws",
                        "osImage": "Ubuntu 24.04.1 LTS",
                        "containerRuntimeVersion": "containerd://1.7.24",
                        "kubeletVersion": "v1.31.4",
                        "kubeProxyVersion": "v1.31.4",
                        "operatingSystem": "linux",
                        "architecture": "amd64",
                    },
                },
            }
        )
    for p in c.pods:
        items.append(_pod_json(c, p))
    for s in c.services:
        spec: dict = {"type": s.kind if s.kind == "ExternalName" else "ClusterIP"}
        if s.kind == "ExternalName":
            spec["externalName"] = "api.partner.example.com"
        else:
            ips = ["None"] if s.kind == "Headless" else [x for x in (s.ip4, s.ip6) if x]
            spec.update(
                {
                    "clusterIP": ips[0],
                    "clusterIPs": ips,
                    "ipFamilies": ["IPv4", "IPv6"] if s.ip6 else ["IPv4"],
                    "ipFamilyPolicy": "PreferDualStack" if s.ip6 else "SingleStack",
                    "ports": [
                        {
                            "name": "dns" if s.port == 53 else "http",
                            "port": s.port,
                            "protocol": s.proto,
                            "targetPort": s.port,
                        }
                    ],
                    "selector": {"k8s-app": "kube-dns"} if s.name == "kube-dns" else s.selector,
                    "sessionAffinity": "None",
                    "internalTrafficPolicy": "Cluster",
                }
            )
            if s.name == "kubernetes":
                del spec["selector"]
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": s.name,
                    "namespace": s.namespace,
                    "uid": s.uid,
                    "resourceVersion": str(c.rng.randint(100, 99999)),
                    "creationTimestamp": _rfc3339(s.created_us),
                    "labels": {"app": s.name},
                },
                "spec": spec,
                "status": {"loadBalancer": {}},
            }
        )
    return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}

def _pod_json(c: Cluster, p: Pod) -> dict:
    container = p.workload.split("-")[0]
    cid = f"containerd://{c.hex_id(256)}"
    image_id = f"{p.image.split(':')[0]}@sha256:{c.hex_id(256)}"
    meta = {
        "name": p.name,
        "namespace": p.namespace,
        "uid": p.uid,
        "labels": p.labels,
        "resourceVersion": str(c.rng.randint(1000, 999999)),
        "creationTimestamp": _rfc3339(p.created_us),
        "ownerReferences": [
            {
                "apiVersion": "batch/v1" if p.owner_kind == "Job" else "apps/v1",
                "kind": p.owner_kind,
                "name": p.owner_name,
                "uid": p.owner_uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    if p.owner_kind in ("ReplicaSet", "Job", "DaemonSet"):
        meta["generateName"] = p.name[: p.name.rfind("-") + 1]
    spec: dict = {
        "containers": [{"name": container, "image": p.image, "imagePullPolicy": "IfNotPresent"}],
        "restartPolicy": "OnFailure" if p.owner_kind == "Job" else "Always",
        "serviceAccountName": "default",
        "schedulerName": "default-scheduler",
        "dnsPolicy": "ClusterFirstWithHostNet" if p.host_network else "ClusterFirst",
    }
    if p.node is not None:
        spec["nodeName"] = p.node.name
    if p.host_network:
        spec["hostNetwork"] = True
    status: dict = {"phase": p.phase, "qosClass": "BestEffort"}
    if p.phase == "Pending":
        status["conditions"] = [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "lastTransitionTime": _rfc3339(p.created_us),
                "message": "0/6 nodes are available: 6 Insufficient memory.",
            }
        ]
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}
    assert p.node is not None and p.start_us is not None
    started = _rfc3339(p.start_us)
    running = p.phase == "Running"
    ready = "True" if running else "False"
    status["conditions"] = [
        {"type": "PodReadyToStartContainers", "status": ready, "lastTransitionTime": started},
        {
            "type": "Initialized",
            "status": "True",
            "lastTransitionTime": started,
            **({} if running else {"reason": "PodCompleted"}),
        },
        {
            "type": "Ready",
            "status": ready,
            "lastTransitionTime": _rfc3339(p.finish_us or p.start_us + 4_000_000),
            **({} if running else {"reason": "PodCompleted"}),
        },
        {
            "type": "ContainersReady",
            "status": ready,
            "lastTransitionTime": _rfc3339(p.finish_us or p.start_us + 4_000_000),
            **({} if running else {"reason": "PodCompleted"}),
        },
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": _rfc3339(p.created_us)},
    ]
    status.update({"hostIP": p.node.ip, "hostIPs": [{"ip": p.node.ip}], "startTime": started})
    status["podIP"] = p.ip4
    status["podIPs"] = [{"ip": x} for x in (p.ip4, p.ip6) if x]
    c_start = _rfc3339(p.start_us + 2_000_000)
    if running:
        state: dict = {"running": {"startedAt": c_start}}
    else:
        assert p.finish_us is not None
        state = {
            "terminated": {
                "exitCode": p.exit_code,
                "reason": "Completed" if p.exit_code == 0 else "Error",
                "startedAt": c_start,
                "finishedAt": _rfc3339(p.finish_us),
                "containerID": cid,
            }
        }
    status["containerStatuses"] = [
        {
            "name": container,
            "image": p.image,
            "imageID": image_id,
            "containerID": cid,
            "ready": running,
            "started": running,
            "restartCount": 0,
            "state": state,
        }
    ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}
