#!/usr/bin/env python3
"""Coverage-guided fuzzing of the parser and the envelope decoders with atheris (longer local runs).

    pip install atheris && python scripts/fuzz.py -atheris_runs=2000000

The property is the same as the hypothesis tests in the suite, for much longer: no input makes the
pure core raise anything but its documented errors (LineRejected from the parser; the decoders
return errors instead of raising).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from pipeline.core.calico_line import LineRejected, parse_message
    from pipeline.core.envelopes import decode_message, iter_file_records


def one_input(data: bytes) -> None:
    decode_message(data)
    text = data.decode("utf-8", "replace")
    try:
        parse_message(text)
        parse_message("calico-packet: " + text)
    except LineRejected:
        pass
    for fmt in ("journal-json", "fluentbit-json", "syslog", "loki-json"):
        for _ in iter_file_records(fmt, text.splitlines(keepends=True)):
            pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
