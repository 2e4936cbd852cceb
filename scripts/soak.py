#!/usr/bin/env python3
"""Soak: run the embedded stack under steady load and report memory, lag and conservation over time.

Not part of the test suite. Example (30 minutes at 2000 records/s):

    python scripts/soak.py --minutes 30 --rate 2000 --out soak.jsonl

Every sample is one JSON line; the last line is the verdict. Conservation is
checked against what was shipped: every distinct record shipped must be stored
or rejected (non-Calico records are counted as ignored by the worker).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from pipeline.basics.config import Settings
from pipeline.core.claims import events_from_list
from pipeline.core.envelopes import encode_batch, from_journal_entry, record_id
from pipeline.core.models import Progress, RawRecord
from pipeline.sources.shipper import publish_owner_events
from pipeline.tooling.bench import StackProcess
from pipeline.tooling.synthetic import generate
from pipeline.transport.kafka import make_producer


async def soak(minutes: float, rate: int, out: Path) -> int:
    corpus = generate(seed=99, namespaces=40, records=30_000)
    base = [from_journal_entry(json.loads(line)) for line in dict.fromkeys(corpus.journal)]
    with tempfile.TemporaryDirectory(prefix="flows-soak-") as tmp, out.open("w") as log:
        stack = StackProcess(Path(tmp) / "stack", Settings())
        async with stack as (live, client):
            now = time.time_ns()
            events, _ = events_from_list(corpus.inventory, now)
            await publish_owner_events(live, events, Progress("inventory", now, now))  # a complete snapshot
            shipped = 0
            started = time.monotonic()
            next_sample = started
            tick = 0.1

            producer = make_producer(live)
            await producer.start()
            try:
                while time.monotonic() - started < minutes * 60:
                    batch = []
                    for _ in range(int(rate * tick)):
                        r = base[shipped % len(base)]
                        batch.append(RawRecord(record_id("soak", shipped), time.time_ns(), r.host, r.message,
                                               r.source))
                        shipped += 1
                    await producer.send_and_wait(live.raw_topic, encode_batch(batch), key=b"soak")
                    if time.monotonic() >= next_sample:
                        status = await client.status()
                        t = status["totals"]
                        sample = {"t_s": round(time.monotonic() - started, 1), "shipped": shipped,
                                  "rss_mb": round(stack.rss_mb(), 1), "lag_messages": sum(status["lag"].values()),
                                  **{k: t.get(k, 0) for k in ("parsed", "stored", "rejected", "ignored",
                                                              "duplicate", "replayed")}}
                        log.write(json.dumps(sample) + "\n")
                        log.flush()
                        print(json.dumps(sample), file=sys.stderr)
                        next_sample += 30
                    await asyncio.sleep(max(0.0, started + (shipped / rate) - time.monotonic()))
            finally:
                await producer.stop()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                t = (await client.status())["totals"]
                if t.get("stored", 0) + t.get("rejected", 0) + t.get("ignored", 0) >= shipped:
                    break
                await asyncio.sleep(1)
            _, rows = await client.query("SELECT records, rejected FROM summary", {})
            stored, rejected = (int(v) for v in rows[0])
            t = (await client.status())["totals"]
            verdict = {"verdict": True, "minutes": minutes, "rate": rate, "shipped": shipped,
                       "stored_distinct": stored, "rejected_distinct": rejected, "ignored": t.get("ignored", 0),
                       "conserved": stored + rejected + t.get("ignored", 0) == shipped,
                       "final_rss_mb": round(stack.rss_mb(), 1)}
            log.write(json.dumps(verdict) + "\n")
            print(json.dumps(verdict))
            return 0 if verdict["conserved"] else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=int, default=2000, help="records per second")
    parser.add_argument("--out", type=Path, default=Path("soak.jsonl"))
    args = parser.parse_args()
    sys.exit(asyncio.run(soak(args.minutes, args.rate, args.out)))


if __name__ == "__main__":
    main()
