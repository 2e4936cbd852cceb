"""Small IP-to-ASN MMDB files for tests, written with ``mmdb-writer`` and read by ``maxminddb``.

Two providers on public ranges (the pipeline only calls globally routable IPs external, so
documentation ranges would never be looked up): AS64500 "Example CDN" announces two
prefixes, AS64501 "Other Cloud" one wide prefix. The AS numbers are the documentation ones;
the data is made up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet

CDN = {"autonomous_system_number": 64500, "autonomous_system_organization": "Example CDN"}
CLOUD = {"autonomous_system_number": 64501, "autonomous_system_organization": "Other Cloud"}
CDN_A, CDN_B, CDN_V6, CLOUD_NET = "151.101.0.0/16", "199.232.0.0/16", "2a04:4e42::/32", "34.64.0.0/10"
TWO_PROVIDERS: dict[str, dict[str, Any]] = {CDN_A: CDN, CDN_B: CDN, CDN_V6: CDN, CLOUD_NET: CLOUD}


def write_mmdb(path: Path, networks: dict[str, dict[str, Any]], database_type: str = "GeoLite2-ASN",
               ip_version: int = 6) -> Path:
    """One record per network; by default an IPv6 tree with IPv4 reachable, as MaxMind's are."""
    writer = MMDBWriter(ip_version=ip_version, ipv4_compatible=ip_version == 6, database_type=database_type,
                        languages=["en"], description={"en": "egress-flows test ASN data"})
    for net, record in networks.items():
        writer.insert_network(IPSet([net]), record)
    writer.to_db_file(str(path))
    return path
