"""Who announces an external IP: autonomous system and prefix from an IP-to-ASN MMDB file.

CDN- and cloud-fronted services rotate IPs inside their provider's announced prefixes, so a
report or a policy that names the provider and its prefix outlives one that names the /32.
The user provides the database (MaxMind GeoLite2-ASN, or IPinfo's ASN / Lite MMDB files);
it is read at report time, never at ingest: one database answers for the whole range asked
about, a monthly update needs no re-ingest, and the cost is one lookup per distinct IP.

Records are read in either vendor's shape: MaxMind's ``autonomous_system_number`` /
``autonomous_system_organization``, IPinfo's ``asn`` ("AS15169") with ``as_name`` or
``name``. The prefix is IPinfo's ``route`` when it holds the IP, else the MMDB network the
IP was found in (for GeoLite2-ASN, the announced prefix or a part of it).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import maxminddb

from pipeline.analysis.evidence import Group

ASN_COLUMNS = ("asn", "as_org", "prefix")
# What a drift row's provider column says about an external destination.
KNOWN_PREFIX = "known-prefix"  # the namespace reached this announced prefix before
KNOWN_PROVIDER = "known-provider"  # ... this AS before, through another prefix
NEW_PROVIDER = "new-provider"  # the namespace never reached this AS before
NO_ASN = "no-asn"  # the database does not know the IP


@dataclass(frozen=True)
class Asn:
    number: int
    organisation: str
    prefix: str

    @property
    def label(self) -> str:
        """``AS64500 Example CDN``: how reports and annotations name the provider."""
        return f"AS{self.number} {self.organisation}".rstrip()


class AsnDb:
    """An opened MMDB file with a per-IP cache (a report asks about each IP many times)."""

    def __init__(self, reader: maxminddb.Reader, path: Path) -> None:
        self._reader = reader
        self.path = path
        self._ipv4_only = reader.metadata().ip_version == 4
        self._cache: dict[str, Asn | None] = {}

    @classmethod
    def open(cls, path: Path | str) -> AsnDb:
        path = Path(path)
        try:
            return cls(maxminddb.open_database(str(path)), path)
        except FileNotFoundError:
            raise ValueError(f"ASN database {path}: no such file") from None
        except OSError as exc:
            raise ValueError(f"ASN database {path}: cannot read it ({exc.strerror})") from None
        except maxminddb.InvalidDatabaseError:
            raise ValueError(f"ASN database {path}: not a MaxMind DB (.mmdb) file") from None

    def describe(self) -> str:
        """Which data answered: file name, database type and build date."""
        meta = self._reader.metadata()
        built = datetime.fromtimestamp(meta.build_epoch, UTC).date().isoformat()
        return f"{self.path.name} ({meta.database_type}, built {built})"

    def lookup(self, address: str) -> Asn | None:
        """The AS announcing ``address``, or None when the database does not hold it."""
        if address not in self._cache:
            self._cache[address] = self._find(address)
        return self._cache[address]

    def _find(self, address: str) -> Asn | None:
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.version == 6 and self._ipv4_only:  # the reader would raise; the database just cannot know
            return None
        record, prefix_len = self._reader.get_with_prefix_len(ip)
        if not record:
            return None
        if not isinstance(record, Mapping):
            raise ValueError(f"ASN database {self.path}: the record of {address} is not a map: is it an ASN database?")
        number = _as_number(record.get("autonomous_system_number", record.get("asn")))
        if number is None:
            raise ValueError(f"ASN database {self.path}: the record of {address} has no AS number "
                             "(autonomous_system_number or asn): is it an ASN database?")
        organisation = " ".join(str(record.get("autonomous_system_organization") or record.get("as_name")
                                    or record.get("name") or "").split())  # one line: it lands in YAML comments
        return Asn(number, organisation, _prefix(ip, prefix_len, record.get("route")))

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> AsnDb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_number(value: Any) -> int | None:
    text = str(value).strip().upper().removeprefix("AS") if value is not None else ""
    return int(text) if text.isdigit() else None


def _prefix(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, prefix_len: int, route: Any) -> str:
    if route:
        try:
            net = ipaddress.ip_network(str(route), strict=False)
        except ValueError:
            net = None
        if net is not None and net.version == ip.version and ip in net:
            return str(net)
    return str(ipaddress.ip_network(f"{ip}/{prefix_len}", strict=False))


# -- report rows -------------------------------------------------------------------------------


def _ip(text: Any) -> str | None:
    """``text`` when it is an IP (a grouped row's dst is a range name: None)."""
    try:
        return str(ipaddress.ip_address(str(text)))
    except ValueError:
        return None


def _external_ip(row: Mapping[str, Any]) -> str | None:
    return _ip(row["dst"]) if row.get("dst_kind") == "external" else None


def with_asn(rows: Iterable[Mapping[str, Any]], db: AsnDb) -> list[dict[str, Any]]:
    """Rows with ``asn``, ``as_org`` and ``prefix`` added (empty for anything but an external IP)."""
    out = []
    for row in rows:
        ip = _external_ip(row)
        found = db.lookup(ip) if ip else None
        out.append({**row, "asn": found.number if found else None, "as_org": found.organisation if found else "",
                    "prefix": found.prefix if found else ""})
    return out


def provider_drift(rows: Iterable[Mapping[str, Any]], known: Iterable[Mapping[str, Any]], db: AsnDb
                   ) -> list[dict[str, Any]]:
    """Drift rows with their provider and a ``provider`` verdict against the external IPs each
    namespace reached before (``known``: rows of ``namespace`` and ``dst``, the baseline's).

    A new IP in a prefix or AS the namespace already reached is the provider rotating
    (``known-prefix``, ``known-provider``); ``new-provider`` is a party never reached before.
    """
    seen_prefixes: dict[str, set[str]] = {}
    seen_numbers: dict[str, set[int]] = {}
    for row in known:
        ip = _ip(row["dst"])
        found = db.lookup(ip) if ip else None
        if found:
            seen_prefixes.setdefault(str(row["namespace"]), set()).add(found.prefix)
            seen_numbers.setdefault(str(row["namespace"]), set()).add(found.number)
    out = []
    for row in with_asn(rows, db):
        verdict = ""
        if _external_ip(row):
            ns = str(row["namespace"])
            if row["asn"] is None:
                verdict = NO_ASN
            elif row["prefix"] in seen_prefixes.get(ns, ()):
                verdict = KNOWN_PREFIX
            elif row["asn"] in seen_numbers.get(ns, ()):
                verdict = KNOWN_PROVIDER
            else:
                verdict = NEW_PROVIDER
        out.append({**row, "provider": verdict})
    return out


def prefix_grouping(db: AsnDb) -> Callable[[str], Group | None]:
    """For ``evidence.group_external``: an external IP's group is its announced prefix."""

    def group_of(address: str) -> Group | None:
        found = db.lookup(address)
        return Group(found.prefix, (found.prefix,), found.label) if found else None

    return group_of
