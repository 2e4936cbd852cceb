"""Calico's host-side interface name for a pod.

Calico names the host end of a pod's veth ``cali`` + the first 11 hex digits
of sha1("<namespace>.<pod name>") (15 characters, the kernel's IFNAMSIZ - 1),
so ``IN=cali…`` in a packet log names the sending pod whatever its IP is.
A configured prefix (FELIX_INTERFACEPREFIX) replaces ``cali``; the 11 digits stay.
"""

from __future__ import annotations

import hashlib

DEFAULT_PREFIX = "cali"


def cali_iface_name(namespace: str, pod: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Return the interface name Calico gives the pod ``namespace/pod``."""
    digest = hashlib.sha1(f"{namespace}.{pod}".encode(), usedforsecurity=False).hexdigest()
    return prefix + digest[:11]
