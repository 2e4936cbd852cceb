"""The registry's compact containers answer what a dict and a list of strings would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.packed import IntMap, TextHeap

KEYS = st.integers(0, 40) | st.integers(0, 2**44) | st.integers(0, 2**63 - 2)  # small keys collide in a small table


@given(st.lists(st.tuples(st.sampled_from(["put", "delete"]), KEYS, st.integers(0, 2**31 - 1)), max_size=200))
def test_int_map_is_a_dict(ops: list[tuple[str, int, int]]) -> None:
    got, want = IntMap(), {}
    for op, key, value in ops:
        if op == "put":
            got.put(key, value)
            want[key] = value
        else:
            got.delete(key)
            want.pop(key, None)
        assert got.get(key) == want.get(key, -1)
    assert sorted(got.items()) == sorted(want.items())
    assert len(got) == len(want)
    assert all(got.get(k) == v for k, v in want.items())


TEXT = st.text(st.characters(codec=None, exclude_categories=()))  # lone surrogates too


@given(st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=30), st.data())
def test_text_heap_keeps_pairs_through_compaction(pairs: list[tuple[str, str]], data: st.DataObject) -> None:
    heap = TextHeap()
    refs = [heap.add(a, b) for a, b in pairs]
    assert [heap.get(r) for r in refs] == pairs
    kept = data.draw(st.lists(st.sampled_from(range(len(pairs))), unique=True))
    moved = heap.compact(refs[i] for i in kept)
    assert [heap.get(moved[refs[i]]) for i in kept] == [pairs[i] for i in kept]
    assert len(heap) == sum(heap.size(moved[refs[i]]) for i in kept)


def test_text_heap_keeps_any_str() -> None:
    heap = TextHeap()
    ref = heap.add("web-\ud800", "é-\U0001f600")  # a lone surrogate a JSON decoder may let through
    assert heap.get(ref) == ("web-\ud800", "é-\U0001f600")


def test_text_heap_keeps_long_first_strings() -> None:
    heap = TextHeap()
    refs = [heap.add("n" * k, "uid") for k in (0, 254, 255, 256, 70_000)]
    assert [heap.get(r) for r in refs] == [("n" * k, "uid") for k in (0, 254, 255, 256, 70_000)]
