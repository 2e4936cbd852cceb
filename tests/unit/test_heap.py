"""release_free_heap gives freed heap pages back, glibc's and Arrow's pool's: measured in a fresh process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.basics.heap import _malloc_trim

_PROBE = """
from pathlib import Path
from pipeline.basics.heap import release_free_heap

def anon_kb():
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("RssAnon:"))
    return int(line.split()[1])

blocks = [bytes(4000) + i.to_bytes(4, "little") for i in range(50_000)]  # ~200 MB from malloc's heap
keep = blocks[-1]  # the heap's top stays in use: only a trim can give back what lies below it
del blocks
freed = anon_kb()
assert release_free_heap()
print(freed - anon_kb())
"""


@pytest.mark.skipif(_malloc_trim() is None or not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_heap_is_given_back() -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    assert int(done.stdout) > 100_000  # kB: most of the ~200 MB freed went back


_ARROW_PROBE = """
from pathlib import Path
import pyarrow as pa
from pipeline.basics.heap import release_free_heap

def anon_kb():
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("RssAnon:"))
    return int(line.split()[1])

arrays = [pa.array([i] * 50_000, type=pa.int64()) for i in range(500)]  # ~200 MB in Arrow's own pool
keep = arrays[-1]
del arrays
freed = anon_kb()
release_free_heap()
print(freed - anon_kb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_arrow_pool_gives_back_what_batches_freed() -> None:
    """The sink's Arrow tables come from pyarrow's pool (mimalloc), which kept ~200 MB freed here
    until asked (a glibc trim gave back 0.4 MB of it)."""
    done = subprocess.run([sys.executable, "-c", _ARROW_PROBE], capture_output=True, text=True, check=True)
    assert int(done.stdout) > 100_000
