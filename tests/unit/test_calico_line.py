"""Calico packet-log parsing: real line shapes, rejects, and properties over generated lines."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.calico_line import MAX_LINE, REASONS, LineRejected, parse_message
from pipeline.core.models import PacketLog

MAC = "MAC=ee:ee:ee:ee:ee:ee:1e:0a:36:33:f5:09:08:00"
DOC_LINE = (
    "Nov 26 11:00:00 c1-control kernel: calico-packet: IN=cali527b0801ecb OUT=eth0 "
    f"{MAC} SRC=172.16.193.134 DST=69.147.80.15 LEN=60 TOS=0x00 PREC=0x00 TTL=63 "
    "ID=58406 DF PROTO=TCP SPT=45588 DPT=80 WINDOW=64860 RES=0x00 SYN URGP=0 "
)
DOC_BODY = DOC_LINE[DOC_LINE.index("IN=") :]
DOC_PKT = PacketLog(
    in_iface="cali527b0801ecb",
    out_iface="eth0",
    src="172.16.193.134",
    dst="69.147.80.15",
    family=4,
    proto="TCP",
    src_port=45588,
    dst_port=80,
    length=60,
    tcp_flags="SYN",
)
V4_HEAD = (
    f"IN=cali527b0801ecb OUT=eth0 {MAC} SRC=172.16.193.134 DST=10.96.0.10 "
    "LEN=68 TOS=0x00 PREC=0x00 TTL=63 ID=40123 DF "
)
V6_HEAD = (
    "IN=cali527b0801ecb OUT=eth0 MAC=ee:ee:ee:ee:ee:ee:1e:0a:36:33:f5:09:86:dd "
    "SRC=fd00:0010:0244:0001:0000:0000:0000:0005 DST=2606:4700:0000:0000:0000:0000:6810:84e5 "
    "LEN=80 TC=0 HOPLIMIT=63 FLOWLBL=123456 "
)
V6_PKT = PacketLog(
    in_iface="cali527b0801ecb",
    out_iface="eth0",
    src="fd00:10:244:1::5",
    dst="2606:4700::6810:84e5",
    family=6,
    proto="TCP",
    length=80,
)
UDP_PKT = PacketLog(
    in_iface="cali527b0801ecb",
    out_iface="eth0",
    src="172.16.193.134",
    dst="10.96.0.10",
    family=4,
    proto="UDP",
    src_port=53000,
    dst_port=53,
    length=68,
)
ICMP_ERROR_INNER = (
    "[SRC=10.96.0.10 DST=172.16.193.134 LEN=68 TOS=0x00 PREC=0x00 TTL=63 ID=40123 DF "
    "PROTO=UDP SPT=53 DPT=4000 LEN=48 ] "
)


def parse_or_reason(message: str, prefix: str = "calico-packet") -> PacketLog | str | None:
    try:
        return parse_message(message, prefix)
    except LineRejected as exc:
        return exc.reason


# --- real line shapes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(DOC_LINE, DOC_PKT, id="calico-doc-kern.log"),
        pytest.param(DOC_LINE[DOC_LINE.index("calico-packet") :], DOC_PKT, id="journald-message"),
        pytest.param("calico-packet" + DOC_BODY, DOC_PKT, id="nftables-no-separator"),
        pytest.param("calico-packet:" + DOC_BODY, DOC_PKT, id="colon-only"),
        pytest.param("calico-packet " + DOC_BODY, DOC_PKT, id="space-only"),
        pytest.param("[12345.678901] calico-packet: " + DOC_BODY, DOC_PKT, id="kernel-timestamp"),
        pytest.param("<5>calico-packet: " + DOC_BODY, DOC_PKT, id="kmsg-priority"),
        pytest.param(
            "Nov 26 11:00:00 calico-packet-node kernel: calico-packet: " + DOC_BODY,
            DOC_PKT,
            id="prefix-in-hostname",
        ),
        pytest.param("calico-packet: " + DOC_BODY.rstrip(), DOC_PKT, id="trailing-space-stripped"),
        pytest.param("calico-packet: " + DOC_BODY + "\n", DOC_PKT, id="trailing-newline"),
        pytest.param("calico-packet: " + DOC_BODY + "MARK=0x10000 ", DOC_PKT, id="mark"),
        pytest.param("calico-packet: " + DOC_BODY + "UID=0 GID=0 MARK=0xa ", DOC_PKT, id="uid-gid-mark"),
        pytest.param("calico-packet: " + DOC_BODY.replace(f"{MAC} ", ""), DOC_PKT, id="no-mac"),
        pytest.param(
            "calico-packet: " + DOC_BODY.replace("IN=cali527b0801ecb OUT=eth0", "IN= OUT=eth0"),
            replace(DOC_PKT, in_iface=""),
            id="empty-in",
        ),
        pytest.param(
            "calico-packet: " + DOC_BODY.replace("OUT=eth0", "OUT= PHYSIN=veth1 PHYSOUT=eth1"),
            replace(DOC_PKT, out_iface=""),
            id="empty-out-physdev",
        ),
        pytest.param(
            "calico-packet: "
            + DOC_BODY.replace(" DF ", " CE DF MF FRAG=0 OPT (0204FFFF) ").replace(
                "SYN URGP=0", "ACK PSH FIN URGP=0 OPT (0101080A)"
            ),
            replace(DOC_PKT, tcp_flags="ACK PSH FIN"),
            id="ip-flags-options-tcp-flags",
        ),
        pytest.param(
            "calico-packet: "
            + DOC_BODY.replace("DPT=80 ", "DPT=80 SEQ=1 ACK=2 ").replace("SYN", "CWR ECE URG ACK RST"),
            replace(DOC_PKT, tcp_flags="CWR ECE URG ACK RST"),
            id="tcp-sequence-and-all-flags",
        ),
        pytest.param(
            "calico-drop: IN=eth0 OUT=cali527b0801ecb SRC=10.0.0.1 DST=172.16.193.134 PROTO=TCP SPT=1 DPT=2 ",
            None,
            id="custom-prefix-not-asked-for",
        ),
        pytest.param(
            "calico-packet: " + V4_HEAD + "PROTO=UDP SPT=53000 DPT=53 LEN=48 ",
            UDP_PKT,
            id="udp-second-len-ignored",
        ),
        pytest.param(
            "calico-packet: " + V4_HEAD.replace("LEN=68 ", "") + "PROTO=UDP SPT=53000 DPT=53 LEN=48 ",
            replace(UDP_PKT, length=None),
            id="udp-without-ip-len",
        ),
        pytest.param(
            "calico-packet: " + V4_HEAD + "PROTO=UDPLITE SPT=53000 DPT=53 LEN=48 ",
            replace(UDP_PKT, proto="UDPLITE"),
            id="udplite",
        ),
        pytest.param(
            "calico-packet: " + V4_HEAD + "PROTO=SCTP SPT=53000 DPT=53 ",
            replace(UDP_PKT, proto="SCTP"),
            id="sctp",
        ),
        pytest.param(
            "calico-packet: " + V4_HEAD + "PROTO=udp SPT=53000 DPT=53 ",
            UDP_PKT,
            id="lowercase-proto-normalised",
        ),
        pytest.param(
            "calico-packet: " + V4_HEAD + "PROTO=ICMP TYPE=8 CODE=0 ID=1234 SEQ=1 ",
            replace(UDP_PKT, proto="ICMP", src_port=None, dst_port=None, icmp_type=8, icmp_code=0),
            id="icmp-echo",
        ),
        pytest.param(
            "calico-packet: " + V4_HEAD + "PROTO=ICMP TYPE=3 CODE=3 " + ICMP_ERROR_INNER,
            replace(UDP_PKT, proto="ICMP", src_port=None, dst_port=None, icmp_type=3, icmp_code=3),
            id="icmp-error-inner-ignored",
        ),
        pytest.param(
            "calico-packet: " + V4_HEAD + "PROTO=ICMP TYPE=3 CODE=4 " + ICMP_ERROR_INNER + "MTU=1400 ",
            replace(UDP_PKT, proto="ICMP", src_port=None, dst_port=None, icmp_type=3, icmp_code=4),
            id="icmp-frag-needed-mtu",
        ),
        pytest.param(
            "calico-packet: "
            + V4_HEAD
            + "PROTO=ICMP TYPE=11 CODE=0 [SRC=10.0.0.9 DST=10.0.0.8 LEN=28 PROTO=ICMP "
            "TYPE=3 CODE=1 [SRC=10.0.0.8 DST=10.0.0.7 LEN=20 PROTO=TCP SPT=1 DPT=2 ] ] ",
            replace(UDP_PKT, proto="ICMP", src_port=None, dst_port=None, icmp_type=11, icmp_code=0),
            id="icmp-error-nested",
        ),
        pytest.param(
            "calico-packet: "
            + V4_HEAD
            + "PROTO=ICMP TYPE=3 CODE=3 [SRC=10.96.0.10 DST=172.16.193.134 LEN=68 PROTO=UDP ",
            replace(UDP_PKT, proto="ICMP", src_port=None, dst_port=None, icmp_type=3, icmp_code=3),
            id="icmp-error-inner-unterminated",
        ),
        pytest.param(
            "calico-packet: " + V4_HEAD + "PROTO=47 MARK=0x10000 ",
            replace(UDP_PKT, proto="47", src_port=None, dst_port=None),
            id="gre-numeric-proto",
        ),
        pytest.param(
            "calico-packet: " + V4_HEAD + "PROTO=ESP SPI=4660 ",
            replace(UDP_PKT, proto="ESP", src_port=None, dst_port=None),
            id="esp-named-proto",
        ),
        pytest.param(
            "calico-packet: " + V6_HEAD + "PROTO=TCP SPT=45588 DPT=443 WINDOW=64800 RES=0x00 SYN URGP=0 ",
            replace(V6_PKT, src_port=45588, dst_port=443, tcp_flags="SYN"),
            id="ipv6-tcp",
        ),
        pytest.param(
            "calico-packet: " + V6_HEAD + "PROTO=ICMPv6 TYPE=128 CODE=0 ID=17 SEQ=1 ",
            replace(V6_PKT, proto="ICMPv6", icmp_type=128, icmp_code=0),
            id="icmpv6-echo",
        ),
        pytest.param(
            "calico-packet: "
            + V6_HEAD
            + "PROTO=ICMPv6 TYPE=1 CODE=4 [SRC=2606:4700:0000:0000:0000:0000:6810:84e5 "
            "DST=fd00:0010:0244:0001:0000:0000:0000:0005 LEN=72 TC=0 HOPLIMIT=63 FLOWLBL=0 "
            "PROTO=UDP SPT=443 DPT=9 LEN=32 ] ",
            replace(V6_PKT, proto="ICMPv6", icmp_type=1, icmp_code=4),
            id="icmpv6-error-inner-ignored",
        ),
    ],
)
def test_real_line_shapes(message: str, expected: PacketLog | None) -> None:
    assert parse_message(message) == expected


def test_custom_prefix() -> None:
    line = "kernel: calico-drop: " + DOC_BODY
    assert parse_message(line, prefix="calico-drop") == DOC_PKT
    assert parse_message(line) is None


def test_direction_follows_the_cali_side() -> None:
    assert parse_message(DOC_LINE).direction() == "egress"
    ingress = DOC_BODY.replace("IN=cali527b0801ecb OUT=eth0", "IN=eth0 OUT=cali527b0801ecb")
    assert parse_message("calico-packet: " + ingress).direction() == "ingress"


# --- rejects ----------------------------------------------------------------------------------------------


def _doc(old: str, new: str) -> str:
    assert old in DOC_LINE
    return DOC_LINE.replace(old, new, 1)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        pytest.param(_doc("SRC=172.16.193.134", "SRC=300.16.193.134"), "bad_src_addr", id="src-octet-range"),
        pytest.param(
            _doc("SRC=172.16.193.134", "SRC=172.016.193.134"), "bad_src_addr", id="src-leading-zero"
        ),
        pytest.param(_doc("SRC=172.16.193.134", "SRC="), "bad_src_addr", id="src-empty"),
        pytest.param(_doc("DST=69.147.80.15", "DST=example.com"), "bad_dst_addr", id="dst-name"),
        pytest.param(_doc("DST=69.147.80.15", "DST=fe80::1%eth0"), "bad_dst_addr", id="dst-scope-id"),
        pytest.param(_doc("DST=69.147.80.15", "DST=2606:4700::6810:84e5"), "family_mismatch", id="v4-v6"),
        pytest.param(_doc("DPT=80", "DPT=70000"), "bad_port", id="port-70000"),
        pytest.param(_doc("SPT=45588", "SPT=-1"), "bad_port", id="port-negative"),
        pytest.param(_doc("SPT=45588", "SPT=4_5"), "bad_port", id="port-underscore"),
        pytest.param(_doc("DPT=80", "DPT=\u0668\u0660"), "bad_port", id="port-arabic-digits"),
        pytest.param(_doc("LEN=60", "LEN=6O"), "bad_number", id="len-not-int"),
        pytest.param(_doc("LEN=60", "LEN=70000"), "bad_number", id="len-too-big"),
        pytest.param("calico-packet: " + V4_HEAD + "PROTO=ICMP TYPE=x CODE=0 ", "bad_number", id="icmp-type"),
        pytest.param(
            "calico-packet: " + V4_HEAD + "PROTO=ICMP TYPE=3 CODE=256 ", "bad_number", id="icmp-code-range"
        ),
        pytest.param(_doc("PROTO=TCP", "PROTO=300"), "bad_proto", id="proto-number-range"),
        pytest.param(_doc("PROTO=TCP", "PROTO="), "bad_proto", id="proto-empty"),
        pytest.param(_doc("PROTO=TCP", "PROTO=\u0131cmp"), "bad_proto", id="proto-non-ascii"),
        pytest.param(_doc(" DST=69.147.80.15", ""), "missing_field", id="missing-dst"),
        pytest.param(_doc(" OUT=eth0", ""), "missing_field", id="missing-out"),
        pytest.param(_doc("PROTO=TCP SPT=45588 ", "PROTO=TCP "), "truncated", id="missing-spt"),
        pytest.param(
            DOC_LINE[: DOC_LINE.index("PROTO")] + "PROTO=TCP INCOMPLETE [65535 bytes] ",
            "truncated",
            id="tcp-incomplete",
        ),
        pytest.param("calico-packet: hello world", "missing_field", id="prefix-then-prose"),
        pytest.param("calico-packet: \x00\xff\ud800\x7f garbage", "missing_field", id="binary-garbage"),
        pytest.param("calico-packet", "truncated", id="cut-after-prefix"),
        pytest.param("kernel: calico-packet: ", "truncated", id="cut-after-separator"),
        pytest.param("calico-packet: IN", "truncated", id="cut-in-IN"),
        pytest.param("calico-packet: IN=cali527b080", "truncated", id="cut-in-iface"),
        pytest.param(DOC_LINE[: DOC_LINE.index("193.134")], "truncated", id="cut-in-src"),
        pytest.param(DOC_LINE[: DOC_LINE.index("PROTO")], "truncated", id="cut-before-proto"),
        pytest.param(DOC_LINE[: DOC_LINE.index("TCP") + 2], "truncated", id="cut-in-proto"),
        pytest.param(DOC_LINE[: DOC_LINE.index("DPT=80") + 5], "truncated", id="cut-in-dpt"),
    ],
)
def test_rejects(message: str, reason: str) -> None:
    with pytest.raises(LineRejected) as exc_info:
        parse_message(message)
    assert exc_info.value.reason == reason
    assert reason in REASONS


def test_ten_megabyte_line_is_rejected_cheaply() -> None:
    for huge in ("calico-packet: " + DOC_BODY * 50_000, "x" * 10_000_000 + "calico-packet: " + DOC_BODY):
        assert len(huge) > 10_000_000
        started = time.perf_counter()
        with pytest.raises(LineRejected) as exc_info:
            parse_message(huge)
        assert exc_info.value.reason == "too_long"
        assert time.perf_counter() - started < 0.1


def test_max_line_boundary() -> None:
    line = "calico-packet: " + DOC_BODY
    padded = line + " " * (MAX_LINE - len(line))
    assert parse_message(padded) == DOC_PKT
    assert parse_or_reason(padded + " ") == "too_long"


@pytest.mark.parametrize(
    "message",
    [
        "",
        "kernel: IN=eth0 OUT= MAC=00 SRC=10.0.0.1 DST=10.0.0.2 LEN=60 PROTO=TCP SPT=1 DPT=2 ",
        "calico-pack: IN=eth0 OUT= SRC=10.0.0.1 DST=10.0.0.2 PROTO=TCP SPT=1 DPT=2 ",
        "systemd[1]: Started Session 3 of user root.",
        "\x00\x01\x02\ud800",
    ],
)
def test_non_calico_messages_are_none(message: str) -> None:
    assert parse_message(message) is None


# --- properties over generated lines ----------------------------------------------------------------------

IFACES = st.one_of(st.just(""), st.from_regex(r"[a-z][a-z0-9.\-]{0,14}", fullmatch=True))
HEADERS = st.sampled_from(["", "kernel: ", "[12345.678901] ", "Nov 26 11:00:00 c1-control kernel: ", "<5>"])
PREFIXES = st.sampled_from(["calico-packet", "calico-drop", "egress-log"])
SEPARATORS = st.sampled_from([": ", ":", " ", ""])
TCP_FLAG_ORDER = ("CWR", "ECE", "URG", "ACK", "PSH", "RST", "SYN", "FIN")
U8 = st.integers(0, 255)
U16 = st.integers(0, 65535)


def _kernel_text(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """%pI4 / %pI6: plain dotted quad, or eight zero-padded groups."""
    return addr.exploded


def _maybe(draw: st.DrawFn, text: str) -> list[str]:
    return [text] if draw(st.booleans()) else []


@st.composite
def inner_packets(draw: st.DrawFn, family: int) -> str:
    """The bracketed copy of the offending packet in an ICMP error, sometimes cut off or nested."""
    addrs = st.ip_addresses(v=family)
    tokens = [f"SRC={_kernel_text(draw(addrs))}", f"DST={_kernel_text(draw(addrs))}", f"LEN={draw(U16)}"]
    tokens += [f"PROTO=UDP SPT={draw(U16)} DPT={draw(U16)} LEN={draw(U16)}"]
    if draw(st.booleans()):
        nested = f"[SRC={draw(addrs)} DST={draw(addrs)} PROTO=TCP SPT={draw(U16)} ]"
        tokens += [f"PROTO=ICMP TYPE=3 CODE=3 {nested}"]
    closing = draw(st.sampled_from(["]", "] MTU=1400", ""]))
    return "[" + " ".join(tokens) + (" " + closing if closing else "")


@st.composite
def packet_lines(draw: st.DrawFn) -> tuple[str, str, PacketLog]:
    """(message, prefix, expected PacketLog) for a line as the kernel would print it."""
    family = draw(st.sampled_from([4, 6]))
    src, dst = draw(st.ip_addresses(v=family)), draw(st.ip_addresses(v=family))
    in_iface, out_iface = draw(IFACES), draw(IFACES)
    tokens = [f"IN={in_iface}", f"OUT={out_iface}"]
    tokens += _maybe(draw, "PHYSIN=veth0 PHYSOUT=eth1")
    tokens += _maybe(draw, MAC)
    tokens += [f"SRC={_kernel_text(src)}", f"DST={_kernel_text(dst)}"]
    length = draw(st.one_of(st.none(), U16))
    tokens += [] if length is None else [f"LEN={length}"]
    if family == 4:
        tokens += [f"TOS=0x{draw(U8):02X} PREC=0x00 TTL={draw(U8)} ID={draw(U16)}"]
        tokens += [flag for flag in ("CE", "DF", "MF") if draw(st.booleans())]
        tokens += _maybe(draw, f"FRAG={draw(st.integers(0, 8191))}")
        tokens += _maybe(draw, "OPT (9404000001020304)")
    else:
        tokens += [f"TC={draw(U8)} HOPLIMIT={draw(U8)} FLOWLBL={draw(st.integers(0, 0xFFFFF))}"]

    icmp = "ICMP" if family == 4 else "ICMPv6"
    printed = draw(st.sampled_from(["TCP", "UDP", "UDPLITE", "SCTP", icmp, "47", "AH", "ESP", str(draw(U8))]))
    expected = PacketLog(
        in_iface=in_iface,
        out_iface=out_iface,
        src=str(src),
        dst=str(dst),
        family=family,
        proto=printed,
        length=length,
    )
    tokens.append(f"PROTO={printed}")
    if printed in ("TCP", "UDP", "UDPLITE", "SCTP"):
        expected.src_port, expected.dst_port = draw(U16), draw(U16)
        tokens.append(f"SPT={expected.src_port} DPT={expected.dst_port}")
    if printed == "TCP":
        tokens += _maybe(draw, f"SEQ={draw(st.integers(0, 2**32 - 1))} ACK={draw(st.integers(0, 2**32 - 1))}")
        flags = [flag for flag in TCP_FLAG_ORDER if draw(st.booleans())]
        expected.tcp_flags = " ".join(flags)
        tokens += [f"WINDOW={draw(U16)} RES=0x00", *flags, f"URGP={draw(U16)}"]
        tokens += _maybe(draw, "OPT (020405B40402080A)")
    elif printed in ("UDP", "UDPLITE"):
        tokens.append(f"LEN={draw(U16)}")
    elif printed == icmp:
        expected.icmp_type, expected.icmp_code = draw(U8), draw(U8)
        tokens.append(f"TYPE={expected.icmp_type} CODE={expected.icmp_code}")
        tail = draw(st.sampled_from(["echo", "error", "none"]))
        if tail == "echo":
            tokens.append(f"ID={draw(U16)} SEQ={draw(U16)}")
        elif tail == "error":
            tokens.append(draw(inner_packets(family)))
    tokens += _maybe(draw, "UID=1000 GID=1000")
    tokens += _maybe(draw, f"MARK=0x{draw(st.integers(0, 2**32 - 1)):x}")

    prefix = draw(PREFIXES)
    message = draw(HEADERS) + prefix + draw(SEPARATORS) + "".join(token + " " for token in tokens)
    return message, prefix, expected


@settings(max_examples=300, deadline=None)
@given(packet_lines())
def test_generated_lines_round_trip(case: tuple[str, str, PacketLog]) -> None:
    message, prefix, expected = case
    assert parse_message(message, prefix) == expected


def _consistent(part: PacketLog, full: PacketLog) -> bool:
    """A parse of a cut line may lose optional fields, never change one."""
    flags, full_flags = part.tcp_flags.split(), full.tcp_flags.split()
    return (
        (part.in_iface, part.out_iface, part.src, part.dst, part.family, part.proto)
        == (full.in_iface, full.out_iface, full.src, full.dst, full.family, full.proto)
        and (part.src_port, part.dst_port) == (full.src_port, full.dst_port)
        and part.length in (None, full.length)
        and part.icmp_type in (None, full.icmp_type)
        and part.icmp_code in (None, full.icmp_code)
        and flags == full_flags[: len(flags)]
    )


@settings(max_examples=60, deadline=None)
@given(packet_lines())
def test_every_truncation_rejects_or_is_a_consistent_subset(case: tuple[str, str, PacketLog]) -> None:
    message, prefix, expected = case
    for cut in range(len(message) + 1):
        head = message[:cut]
        result = parse_or_reason(head, prefix)
        if result is None:
            assert prefix not in head
        elif isinstance(result, PacketLog):
            assert _consistent(result, expected), (head, result)
        else:
            assert result in ("truncated", "missing_field"), (head, result)


def _check_outcome(message: str, prefix: str = "calico-packet") -> None:
    """Only LineRejected may escape, and a returned PacketLog holds well-formed values."""
    try:
        pkt = parse_message(message, prefix)
    except LineRejected as exc:
        assert exc.reason in REASONS
        return
    if pkt is None:
        assert prefix not in message
        return
    assert pkt.family in (4, 6)
    assert ipaddress.ip_address(pkt.src).version == ipaddress.ip_address(pkt.dst).version == pkt.family
    for port in (pkt.src_port, pkt.dst_port):
        assert port is None or 0 <= port <= 65535


FRAGMENTS = st.sampled_from(
    [
        "calico-packet",
        ": ",
        " ",
        "IN=",
        "OUT=",
        "SRC=",
        "DST=",
        "LEN=",
        "PROTO=",
        "SPT=",
        "DPT=",
        "TYPE=",
        "CODE=",
        "TCP",
        "UDP",
        "ICMP",
        "ICMPv6",
        "SYN",
        "ACK",
        "[",
        "]",
        "10.0.0.1",
        "fd00::1",
        "300.1.1.1",
        "65536",
        "80",
        "0",
        "-1",
        "cali0",
        "\x00",
        "\ud800",
        "\n",
        "٣",
        "=",
        ":",
    ]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), st.lists(FRAGMENTS, max_size=40).map("".join)))
def test_arbitrary_text_only_ever_raises_line_rejected(text: str) -> None:
    _check_outcome(text)
    _check_outcome("calico-packet: " + text)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_decoded_bytes_only_ever_raise_line_rejected(raw: bytes) -> None:
    text = raw.decode("utf-8", "surrogateescape")
    _check_outcome(text)
    _check_outcome("calico-packet: IN=" + text)


EDITS = ["", " ", "[", "]", "=", "x", "9", ":", "\n"]


@settings(max_examples=200, deadline=None)
@given(packet_lines(), st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(EDITS))))
def test_mutated_lines_only_ever_raise_line_rejected(
    case: tuple[str, str, PacketLog], edits: list[tuple[int, str]]
) -> None:
    message, prefix, _ = case
    for position, text in edits:
        position %= len(message) + 1
        message = message[:position] + text + message[position + 1 :]
    _check_outcome(message, prefix)
