"""Which insert errors a retry can cure, and which ones are in the rows themselves.

The sink retries a *transient* error with backoff (the server or the network will come
back) and splits a batch on a *deterministic* one (the same rows fail the same way every
time, so a retry would stall the partition forever). An error we do not recognise is
treated as transient: holding a batch while readiness and the blocked gauge say so loses
nothing, whereas moving good rows to rejects on an unknown outage would take them out of
fan-out and drift (and so out of the policy that gets enforced).

Codes are ClickHouse's ``ErrorCodes`` (src/Common/ErrorCodes.cpp); one code can cover both
kinds (252 TOO_MANY_PARTS is "too many parts" under merge pressure, transient, and "too many
partitions for single INSERT block", deterministic), so the message decides there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_CODE_RE = re.compile(r"\bCode: (\d+)\b")
_NAME_RE = re.compile(r"\(([A-Z][A-Z0-9_]+)\)(?: \(version .*\))?\s*$")
_EXCEPTION_RE = re.compile(r"\bDB::Exception: (.*)", re.S)

# Codes whose cause lies in the data sent (or in a schema or grant that refuses it) and that a
# retry of the same rows meets again.
DETERMINISTIC_CODES = frozenset({
    6,    # CANNOT_PARSE_TEXT
    8,    # THERE_IS_NO_COLUMN
    10,   # NOT_FOUND_COLUMN_IN_BLOCK
    16,   # NO_SUCH_COLUMN_IN_TABLE
    20,   # NUMBER_OF_COLUMNS_DOESNT_MATCH
    26,   # CANNOT_PARSE_QUOTED_STRING
    27,   # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,   # CANNOT_PARSE_DATE
    41,   # CANNOT_PARSE_DATETIME
    43,   # ILLEGAL_TYPE_OF_ARGUMENT
    44,   # ILLEGAL_COLUMN
    47,   # UNKNOWN_IDENTIFIER
    53,   # TYPE_MISMATCH
    60,   # UNKNOWN_TABLE
    69,   # ARGUMENT_OUT_OF_BOUND
    70,   # CANNOT_CONVERT_TYPE
    72,   # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA
    131,  # TOO_LARGE_STRING_SIZE
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    469,  # VIOLATED_CONSTRAINT
    497,  # ACCESS_DENIED
    675,  # CANNOT_PARSE_IPV4
    676,  # CANNOT_PARSE_IPV6
})
# Of those, the ones no row causes (a grant, a table or column the schema lacks): every row
# fails alike, so the rows are refused together instead of one by one.
WHOLE_BATCH_CODES = frozenset({8, 10, 16, 20, 47, 60, 497})
_TOO_MANY_PARTS = 252
_MERGE_PRESSURE = "too many parts"  # vs "too many partitions for single INSERT block"


@dataclass(frozen=True)
class InsertError:
    """What the sink needs of a failed insert: can a retry cure it, and what to tell the reader."""

    deterministic: bool
    per_row: bool  # a deterministic error some rows cause and others not: worth splitting the batch for
    reason: str  # short and stable, for rejects.reason: the server's error name, or the exception type
    message: str  # the server's own message (or the exception's text), for rejects.detail


def classify(exc: BaseException) -> InsertError:
    """Transient or deterministic, with the server's error name and message."""
    text = str(exc)
    code_match = _CODE_RE.search(text)
    if code_match is None:
        # Client side: a value pyarrow cannot convert (a port over 65535, a lone surrogate)
        # fails before anything is sent, and fails again on a retry.
        deterministic = _is_conversion_error(exc)
        return InsertError(deterministic, deterministic, type(exc).__name__, text)
    code = int(code_match.group(1))
    name_match = _NAME_RE.search(text)
    body = _EXCEPTION_RE.search(text)
    message = (body.group(1) if body else text).strip()
    # one code, two causes for TOO_MANY_PARTS: the wording tells them apart
    deterministic = code in DETERMINISTIC_CODES or (code == _TOO_MANY_PARTS and _MERGE_PRESSURE not in text.lower())
    reason = name_match.group(1) if name_match else f"code_{code}"
    return InsertError(deterministic, deterministic and code not in WHOLE_BATCH_CODES, reason, message)


def _is_conversion_error(exc: BaseException) -> bool:
    import pyarrow as pa  # imported here, as by the insert path: CLI commands that never insert skip it

    return isinstance(exc, (UnicodeError, OverflowError, pa.ArrowException))
