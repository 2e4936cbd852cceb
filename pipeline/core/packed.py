"""Compact containers for the ownership registry's hundreds of thousands of claims (pure, no I/O).

A Python object costs 50-100 bytes before it holds anything, and a dict entry with its
key object another 60-100; the registry keeps one entry per claim for a week of churn.
These keep numbers in typed arrays and text in one byte heap, so a claim costs roughly
what its data does.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable

_EMPTY, _DELETED = 0, -1
_CODEC, _ERRORS = "utf-8", "surrogatepass"  # any Python str round-trips, lone surrogates included
_length = struct.Struct("<I").unpack_from
_LONG = 255
_GOLDEN, _BITS64 = 0x9E3779B97F4A7C15, 2**64 - 1


class IntMap:
    """Non-negative int (below 2**63 - 1) -> non-negative int in two arrays (open addressing, linear probing).

    A key's slot comes from Fibonacci hashing (its product with 2**64 / golden ratio, top bits):
    addresses of a cluster often differ only in bits a plain mask would drop (10.N.0.7 on every
    node N), and linear probing turns such a pile-up into a scan. About 24 bytes per entry,
    against ~100 for a dict with int keys.
    """

    __slots__ = ("_keys", "_values", "_mask", "_shift", "_used", "_live")

    def __init__(self) -> None:
        self._allocate(8)

    def _allocate(self, capacity: int) -> None:
        self._keys = array("q", bytes(8 * capacity))  # key + 1; 0: never used; -1: deleted
        self._values = array("i", bytes(4 * capacity))
        self._mask = capacity - 1
        self._shift = 64 - capacity.bit_length() + 1
        self._used = 0  # live and deleted slots: what lengthens probes
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def _slot(self, key: int) -> int:
        """The slot holding ``key``, or the free slot where it would go."""
        keys, mask, stored = self._keys, self._mask, key + 1
        i, free = (key * _GOLDEN & _BITS64) >> self._shift, -1
        while True:
            k = keys[i]
            if k == stored:
                return i
            if k == _EMPTY:
                return i if free < 0 else free
            if k == _DELETED and free < 0:
                free = i
            i = (i + 1) & mask

    def get(self, key: int) -> int:
        """The value of ``key``, -1 when absent."""
        keys, mask, stored = self._keys, self._mask, key + 1
        i = (key * _GOLDEN & _BITS64) >> self._shift
        while True:
            k = keys[i]
            if k == stored:
                return self._values[i]
            if k == _EMPTY:
                return -1
            i = (i + 1) & mask

    def put(self, key: int, value: int) -> None:
        i = self._slot(key)
        k = self._keys[i]
        if k != key + 1:
            if k == _EMPTY:
                self._used += 1
            self._live += 1
            self._keys[i] = key + 1
        self._values[i] = value
        if 3 * self._used > 2 * (self._mask + 1):
            self._resize()

    def delete(self, key: int) -> None:
        i = self._slot(key)
        if self._keys[i] == key + 1:
            self._keys[i] = _DELETED
            self._live -= 1

    def items(self) -> list[tuple[int, int]]:
        return [(k - 1, v) for k, v in zip(self._keys, self._values, strict=True) if k > 0]

    def _resize(self) -> None:
        live = self.items()
        capacity = 8
        while 2 * len(live) >= capacity:  # at most half full after growing: room before the next resize
            capacity *= 2
        self._allocate(capacity)
        for key, value in live:
            self.put(key, value)


class TextHeap:
    """Pairs of strings appended to one bytearray; a pair is named by one int (offset and length).

    Freed pairs stay in place until ``compact`` copies the live ones into a new heap.
    """

    __slots__ = ("_heap",)
    _LEN_BITS = 24  # an owner event is at most 1 MiB, so a pair is shorter than 2**24 bytes

    def __init__(self) -> None:
        self._heap = bytearray()

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, first: str, second: str) -> int:
        a, b = first.encode(_CODEC, _ERRORS), second.encode(_CODEC, _ERRORS)
        # the first string's length: one byte, or 255 and four (pod names are at most 253 bytes)
        head = bytes((len(a),)) if len(a) < _LONG else bytes((_LONG,)) + struct.pack("<I", len(a))
        ref = len(self._heap) << self._LEN_BITS | (len(head) + len(a) + len(b))
        self._heap += head + a + b
        return ref

    def get(self, ref: int) -> tuple[str, str]:
        at, heap = ref >> self._LEN_BITS, self._heap
        n = heap[at]
        start = at + 1 if n < _LONG else at + 5
        split = start + (n if n < _LONG else _length(heap, at + 1)[0])
        end = at + (ref & ((1 << self._LEN_BITS) - 1))
        return heap[start:split].decode(_CODEC, _ERRORS), heap[split:end].decode(_CODEC, _ERRORS)

    def size(self, ref: int) -> int:
        return ref & ((1 << self._LEN_BITS) - 1)

    def compact(self, refs: Iterable[int]) -> dict[int, int]:
        """Keep only ``refs`` (duplicates allowed); return old ref -> new ref."""
        old, self._heap = self._heap, bytearray()
        moved: dict[int, int] = {}
        for ref in refs:
            if ref not in moved:
                at, n = ref >> self._LEN_BITS, ref & ((1 << self._LEN_BITS) - 1)
                moved[ref] = len(self._heap) << self._LEN_BITS | n
                self._heap += old[at:at + n]
        return moved
