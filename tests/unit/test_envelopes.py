"""Envelope decoding: every input shape, and malformed, truncated, huge and duplicated input."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.envelopes import (
    MAX_MESSAGE_CHARS,
    EnvelopeError,
    decode_columns,
    decode_message,
    encode_batch,
    from_fluentbit,
    from_journal_entry,
    from_loki_entry,
    from_raw_line,
    from_syslog_line,
    iter_file_records,
    parse_rfc3339_ns,
    sniff_format,
)
from pipeline.core.models import RawRecord

LINE = ("calico-packet: IN=cali527b0801ecb OUT=eth0 SRC=172.16.193.134 DST=69.147.80.15 LEN=60 TOS=0x00 "
        "PREC=0x00 TTL=63 ID=58406 DF PROTO=TCP SPT=45588 DPT=80 WINDOW=64860 RES=0x00 SYN URGP=0 ")
JOURNAL = {"__CURSOR": "s=abc;i=1f", "__REALTIME_TIMESTAMP": "1732618800123456", "_HOSTNAME": "node1",
           "MESSAGE": LINE, "_TRANSPORT": "kernel"}


def test_journal_entry_identity_is_the_line():
    a = from_journal_entry(JOURNAL)
    assert a.ts_ns == 1732618800123456000 and a.host == "node1" and a.message == LINE
    # the cursor differs between journal files holding the same entry (a copy, journal-remote): not identity
    assert from_journal_entry({**JOURNAL, "__CURSOR": "s=other;i=9"}).record_id == a.record_id
    for changed in ({"_HOSTNAME": "node2"}, {"__REALTIME_TIMESTAMP": "1732618800123457"},
                    {"MESSAGE": LINE.replace("SPT=45588", "SPT=45589")}):
        assert from_journal_entry({**JOURNAL, **changed}).record_id != a.record_id, changed
    hostless = {k: v for k, v in JOURNAL.items() if k != "_HOSTNAME"}
    assert from_journal_entry(hostless).record_id != from_journal_entry({**hostless, "__CURSOR": "s=x"}).record_id


def loki_as_promtail(entry: dict, **labels: str) -> tuple[dict[str, str], str, str]:
    """A journal entry as promtail/alloy push it: the realtime µs as ns, MESSAGE as the line."""
    return {"job": "systemd-journal", **labels}, str(int(entry["__REALTIME_TIMESTAMP"]) * 1000), entry["MESSAGE"]


def test_one_kernel_line_is_one_record_on_every_path():
    """The same journal entry through ship journal/file, fluent-bit (each timestamp form), Loki and syslog."""
    want = from_journal_entry(JOURNAL).record_id
    fluent = {k: v for k, v in JOURNAL.items() if not k.startswith("__")}
    paths = {
        "fluent-bit iso8601_ns": from_fluentbit({**fluent, "@timestamp": "2024-11-26T11:00:00.123456000Z"}),
        "fluent-bit double": from_fluentbit({**fluent, "@timestamp": 1732618800.123456}),
        "fluent-bit with cursor": from_fluentbit({**JOURNAL, "@timestamp": 1732618800.5}),
        "fluent-bit on Kafka": decode_message(orjson.dumps({**fluent, "@timestamp": 1732618800.123456}))[0][0],
        "Loki, hostname label": from_loki_entry(*loki_as_promtail(JOURNAL, hostname="node1")),
        "Loki, other labels": from_loki_entry(*loki_as_promtail(JOURNAL, nodename="NODE1", unit="kernel")),
        "Loki, JSON line": from_loki_entry({"job": "j"}, "1732618800123456000", orjson.dumps(JOURNAL).decode()),
        "Loki, chosen label": from_loki_entry(*loki_as_promtail(JOURNAL, instance="x", node="node1"),
                                              host_labels=("node",)),
        "Loki, trailing space dropped": from_loki_entry({"host": "node1"}, "1732618800123456000", LINE.rstrip()),
        "syslog at µs": from_syslog_line(f"2024-11-26T11:00:00.123456+00:00 node1 kernel: {LINE}"),
    }
    assert {name: rec.record_id for name, rec in paths.items()} == dict.fromkeys(paths, want)
    assert paths["Loki, JSON line"].host == "node1" and paths["Loki, JSON line"].message == LINE
    # a Loki timestamp with its own ns digits is the same µs
    assert from_loki_entry({"host": "node1"}, "1732618800123456789", LINE).record_id == want
    assert from_loki_entry({"host": "node1"}, "1732618800123457000", LINE).record_id != want
    # the instance label is read only when nothing before it in the list names the host
    assert from_loki_entry(*loki_as_promtail(JOURNAL, instance="node1")).record_id == want
    assert from_loki_entry(*loki_as_promtail(JOURNAL, instance="node1", host="node2")).record_id != want


def test_without_a_host_the_source_identity_is_kept():
    labels, ts, line = loki_as_promtail(JOURNAL)
    a = from_loki_entry(labels, ts, line)
    assert a.host == "" and a.record_id != from_journal_entry(JOURNAL).record_id
    assert a.record_id != from_loki_entry({**labels, "stream": "other"}, ts, line).record_id  # labels tell them apart
    bare = {"MESSAGE": LINE, "@timestamp": 1732618800.25}
    assert from_fluentbit({**bare, "_BOOT_ID": "b1"}).record_id != from_fluentbit({**bare, "_BOOT_ID": "b2"}).record_id


def test_raw_lines_are_identified_by_their_text():
    a = from_raw_line(LINE, "n1", received_ns=10**18)
    assert a.ts_ns == 10**18 and a.record_id == from_raw_line(LINE + "\n", "n1", received_ns=5).record_id
    assert a.record_id != from_raw_line(LINE, "n2").record_id
    lines = [LINE + "\n", LINE.replace("SPT=45588", "SPT=1") + "\n"]
    assert [r.ts_ns for r in iter_file_records("raw", lines, "n1", raw_time_ns=7)] == [7, 7]


def test_journal_binary_message_array():
    rec = from_journal_entry({**JOURNAL, "MESSAGE": list(b"calico-packet: \xff IN=")})
    assert rec.message.startswith("calico-packet: \ufffd")


@pytest.mark.parametrize("entry,reason", [
    ({"MESSAGE": LINE}, "bad_timestamp"),
    ({**JOURNAL, "__REALTIME_TIMESTAMP": "soon"}, "bad_timestamp"),
    ({k: v for k, v in JOURNAL.items() if k != "MESSAGE"}, "missing_field"),
    ({**JOURNAL, "MESSAGE": {"nested": 1}}, "bad_message"),
    ([1, 2], "bad_entry"),
])
def test_journal_malformed(entry, reason):
    with pytest.raises(EnvelopeError) as exc:
        from_journal_entry(entry)
    assert exc.value.reason == reason


def test_fluentbit_timestamps():
    bare = from_fluentbit({"MESSAGE": LINE, "_HOSTNAME": "n2", "@timestamp": 1732618800.25})
    assert bare.ts_ns == 1732618800250000000 and bare.host == "n2" and bare.source == "fluent-bit"
    iso = from_fluentbit({"MESSAGE": LINE, "@timestamp": "2024-11-26T11:00:00.5Z"})
    assert iso.ts_ns == parse_rfc3339_ns("2024-11-26T11:00:00.5Z")
    with pytest.raises(EnvelopeError):
        from_fluentbit({"MESSAGE": LINE})


def test_syslog_forms():
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    rec = from_syslog_line(f"Nov 26 11:00:00 node1 kernel: [12345.678901] {LINE}", now)
    assert rec.host == "node1" and rec.message.startswith("[12345.678901] calico-packet:")
    assert rec.ts_ns == int(datetime(2026, 11, 26, 11, tzinfo=UTC).timestamp()) * 10**9
    # December lines read in January belong to last year
    old = from_syslog_line(f"Dec 31 23:59:59 node1 kernel: {LINE}", datetime(2027, 1, 1, 0, 5, tzinfo=UTC))
    assert datetime.fromtimestamp(old.ts_ns / 1e9, UTC).year == 2026
    rfc = from_syslog_line(f"2026-11-26T11:00:00.123456+00:00 node2 kernel: {LINE}")
    assert rfc.host == "node2" and rfc.ts_ns % 10**9 == 123456000 and rfc.message == LINE
    for bad in ("garbage", "Foo 26 11:00:00 node1 kernel: x", "Feb 30 11:00:00 node1 kernel: x"):
        with pytest.raises(EnvelopeError):
            from_syslog_line(bad, now)


def test_loki_response_file_and_malformed_streams():
    doc = {"status": "success", "data": {"resultType": "streams", "result": [
        {"stream": {"hostname": "n1", "job": "kernel"}, "values": [["1732618800000000001", LINE],
                                                                   ["1732618800000000001", LINE + "x"]]},
        {"stream": {"node": "n2"}, "values": [["notanumber", LINE], ["1", 5], "bad"]},
        {"values": []},
    ]}}
    items = list(iter_file_records("loki-json", [orjson.dumps(doc).decode()]))
    recs = [i for i in items if isinstance(i, RawRecord)]
    errs = [i for i in items if isinstance(i, EnvelopeError)]
    assert len(recs) == 2 and {r.host for r in recs} == {"n1"}
    assert recs[0].record_id != recs[1].record_id  # same ns, different line: two entries
    assert [e.reason for e in errs] == ["bad_timestamp", "bad_entry", "bad_entry", "bad_loki_stream"]
    assert [type(i).__name__ for i in iter_file_records("loki-json", ['{"data": 1}'])] == ["EnvelopeError"]


def test_file_records_keep_going_after_bad_lines():
    lines = [orjson.dumps(JOURNAL).decode(), "{not json", "", '{"MESSAGE": 1}', orjson.dumps(
        {**JOURNAL, "__CURSOR": "s=abc;i=2"}).decode()]
    items = list(iter_file_records("journal-json", lines))
    assert [type(i).__name__ for i in items] == ["RawRecord", "EnvelopeError", "EnvelopeError", "RawRecord"]
    assert items[1].raw == "{not json"


def test_sniff_format():
    assert sniff_format(orjson.dumps(JOURNAL).decode()) == "journal-json"
    assert sniff_format('{"status":"success","data":{"resultType":"streams"}}') == "loki-json"
    assert sniff_format('{"MESSAGE": "x", "@timestamp": 1}') == "fluentbit-json"
    assert sniff_format("Nov 26 11:00:00 node1 kernel: x") == "syslog"
    assert sniff_format(LINE) == "raw"


def test_batch_round_trip_and_truncation():
    recs = [RawRecord("0" * 31 + str(i), 10**18 + i, "n1", LINE, "journal") for i in range(3)]
    recs.append(RawRecord("a" * 32, 5, "n1", "x" * (MAX_MESSAGE_CHARS + 10), "raw", {"k": "v"}))
    back, errors = decode_message(encode_batch(recs))
    assert not errors and [r.record_id for r in back] == [r.record_id for r in recs]
    assert back[-1].orig_len == MAX_MESSAGE_CHARS + 10 and len(back[-1].message) == MAX_MESSAGE_CHARS
    assert back[-1].labels == {"k": "v"}


@pytest.mark.parametrize("value,reason", [
    (None, "empty_message"),
    (b"{", "bad_json"),
    (b'{"v": 2, "records": []}', "bad_envelope"),
    (b'{"no": "message"}', "bad_entry"),
])
def test_decode_message_errors(value, reason):
    records, errors = decode_message(value)
    assert records == [] and [e.reason for e in errors] == [reason]


def test_decode_message_bad_items_do_not_lose_good_ones():
    value = orjson.dumps({"v": 1, "records": [{"id": "f" * 32, "ts": 1, "host": "h", "msg": LINE, "src": "j"},
                                              {"ts": "x"}, 7, {"id": "short", "ts": 2, "host": "h", "msg": "m"}]})
    records, errors = decode_message(value)
    assert len(records) == 2 and len(errors) == 2
    assert len(records[1].record_id) == 32  # an invalid id is replaced by a content hash


def test_decode_message_bare_text_and_fluentbit():
    records, _ = decode_message(LINE.encode(), kafka_ts_ms=1000)
    assert records[0].ts_ns == 10**9 and records[0].source == "raw"
    records, _ = decode_message(orjson.dumps({"MESSAGE": LINE, "_HOSTNAME": "n", "@timestamp": 1.0}))
    assert records[0].source == "fluent-bit"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_decode_message_never_raises(data):
    records, errors = decode_message(data)
    assert isinstance(records, list) and isinstance(errors, list)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=500))
def test_file_decoders_never_raise(text):
    for fmt in ("journal-json", "fluentbit-json", "syslog", "raw", "loki-json"):
        for item in iter_file_records(fmt, text.splitlines(keepends=True)):
            assert isinstance(item, (RawRecord, EnvelopeError))


# -- a fetch of envelopes at once (decode_columns) ---------------------------------------------------

_HEX_ID = st.text("0123456789abcdef", min_size=32, max_size=32)
_SPOILABLE = ["record_id", "ts_ns", "source", "labels", "orig_len"]


@st.composite
def _records(draw: st.DrawFn) -> RawRecord:
    """Mostly what our shippers send; now and then one field as decode_message would change it or the
    columnar reader could not hold it (an id it recomputes, an integer past 64 bits, a source it cuts,
    labels, a length)."""
    spoil = draw(st.sampled_from([None] * 4 + _SPOILABLE + [None] * 4))  # not the ends: hypothesis favours them
    rec = RawRecord(draw(_HEX_ID), draw(st.integers(min_value=0, max_value=2**63 - 1)),
                    draw(st.one_of(st.just(""), st.text(max_size=12))),
                    draw(st.one_of(st.just(LINE), st.text(max_size=80))),
                    draw(st.sampled_from(["journal", "file", "undecodable:json", "x" * 32])))
    if spoil == "record_id":
        rec.record_id = draw(st.text(max_size=34))
    elif spoil == "ts_ns":
        rec.ts_ns = draw(st.integers(min_value=-2**70, max_value=2**70))
    elif spoil == "source":
        rec.source = draw(st.one_of(st.text(max_size=32), st.text(min_size=33, max_size=40)))
    elif spoil == "labels":
        rec.labels = draw(st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2))
    elif spoil == "orig_len":
        rec.orig_len = draw(st.integers(min_value=0, max_value=10**6))
    return rec


# Edits of a well-formed envelope that a JSON reader could take differently, or not at all.
_EDITS = [(b'"ts":', b'"ts":"'), (b'"ts":', b'"ts":-0.5e1+'), (b'"host":', b'"host":null,"host":'),
          (b'"msg":', b'"msg":1,"msg":'), (b'"src":', b'"x":0,"src":'), (b'}]}', b'},null]}'), (b'}]}', b'}],"v":1}'),
          (b',"', b' ,\n "'), (b',"', b',\r"'), (b'"msg":"', b'"msg":"\\udc00'), (b'"msg":"', b'"msg":"\\ud83d\\ude00'),
          (b'"msg":"', b'"msg":"\xff'), (b'"msg":"', b'"msg":"\xed\xa0\x80'), (b'"v":1', b'"v":2'),
          (b']}', b']}{"v":1,"records":[]}'),
          (b'"id":"', b'"id":"A'), (b'"ts":', b'"ts":01'), (b'"src":"', b'"src":"\\u0000'),
          *[(b'"host":"",', b''), (b',"src":"journal"', b''), (b'"host":"",', b'"host":null,'),
            (b'}]}', b'},null]}'), (b'"id":', b'"id":null,"i":')] * 3]


@st.composite
def _messages(draw: st.DrawFn) -> list[bytes]:
    out = []
    for recs in draw(st.lists(st.lists(_records(), max_size=3), min_size=1, max_size=3)):
        try:
            value = encode_batch(recs)
        except (TypeError, orjson.JSONEncodeError):  # an integer orjson cannot write
            continue
        if draw(st.sampled_from([False, True, True, False])):  # (hypothesis favours the ends)
            old, new = draw(st.sampled_from(_EDITS))
            value = value.replace(old, new, draw(st.integers(min_value=1, max_value=2)))
        if draw(st.sampled_from([False] * 5 + [True] + [False] * 5)):  # a random byte edit anywhere
            at = draw(st.integers(min_value=0, max_value=len(value)))
            value = value[:at] + draw(st.binary(min_size=0, max_size=2)) + value[at + 1:]
        out.append(value)
    return out


def _by_message(values: list[bytes]) -> tuple[list[RawRecord], list[int]] | None:
    """What decode_message makes of each message, when none is refused."""
    records, counts = [], []
    for value in values:
        decoded, errors = decode_message(value)
        if errors:
            return None
        records += decoded
        counts.append(len(decoded))
    return records, counts


@settings(max_examples=600, deadline=None)
@given(_messages())
def test_decode_columns_answers_only_as_decode_message_does(values):
    """Where the columnar decoder answers, its records (and records per message) are decode_message's;
    where decode_message refuses a message, or changes a record (an id it recomputes, a source it cuts,
    labels, a length), the columnar decoder gives the fetch back."""
    columns = decode_columns(values)
    if columns is None:
        return
    cols, counts = columns
    reference = _by_message(values)
    assert reference is not None, values
    records, ref_counts = reference
    assert counts == ref_counts
    assert [cols.record(i) for i in range(len(cols))] == records


def test_decode_columns_takes_what_our_shippers_send_and_gives_back_the_rest():
    recs = [RawRecord(f"{i:032x}", 1_732_618_800_000_000_000 + i, "node-1", LINE, "journal") for i in range(5)]
    values = [encode_batch(recs[:2]), encode_batch([]), encode_batch(recs[2:])]
    cols, counts = decode_columns(values)
    assert counts == [2, 0, 3] and [cols.record(i) for i in range(len(cols))] == recs
    assert decode_columns([encode_batch([recs[0]])] * 3)[1] == [1, 1, 1]  # the same record thrice: kept thrice
    for other in (b"a bare line", None, orjson.dumps({"MESSAGE": LINE}),
                  encode_batch([RawRecord("x", 1, "h", LINE, "journal")]),  # an id decode_message recomputes
                  encode_batch([RawRecord(f"{1:032x}", 1, "h", LINE, "loki", {"job": "x"})]),  # labels
                  encode_batch([RawRecord(f"{1:032x}", 1, "h", "cut", "journal", None, 99_999)])):  # travelled cut
        assert decode_columns([values[0], other]) is None
    assert decode_columns([]) is None
