"""The worker: raw topic -> parse + enrich -> ClickHouse, offsets committed after the insert.

A plain aiokafka consumer with a batching sink (one batch for all assigned
partitions, flushed when full or expired, offsets committed synchronously only
after ClickHouse confirmed the insert). See docs/design.md for
why this is not a Faust agent: Faust's per-event cost caps a worker at ~12k
events/s here and ``take()`` acknowledges a batch even when its body raised.

The owners topic is read by every worker from the beginning (no consumer
group): the registry is rebuilt from it before any raw record is processed, so
a restart never has a window where known IPs resolve to nothing. After every
fetch of raw records, the owners topic is read up to the end offsets it had
*then*, so a record is never attributed against ownership older than what was
acknowledged before the record was produced (``inventory load`` then ``ship``
needs no pause). Records that cannot be attributed yet wait in a ``Hold`` for
the owners watermark; rows stored unattributed are repaired later.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
import time
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from pipeline.basics import metrics
from pipeline.basics.config import Settings
from pipeline.basics.heap import release_free_heap
from pipeline.core.columnar import add_records, next_batch
from pipeline.core.enrich import FUTURE_SLACK_NS, Batch
from pipeline.core.envelopes import decode_columns, decode_message, prepare_columns
from pipeline.core.hold import Hold, claim_keys
from pipeline.core.models import OwnerEvent, Progress, RawRecord, RecordColumns
from pipeline.core.registry import OwnershipRegistry
from pipeline.store.clickhouse import INSERT_ATTEMPT_S
from pipeline.store.edge_seals import seal_edges
from pipeline.store.ownership import (
    FIRST_CLAIM,
    ClaimKey,
    expire_ownership,
    load_endpoints,
    ownership_page,
    record_rule_settings,
)
from pipeline.transport import owners_topic
from pipeline.transport.kafka import MAX_BATCH_RECORDS, REBALANCE_TIMEOUT_MS, make_consumer
from pipeline.worker.repairs import Repairs, destination_change
from pipeline.worker.sink import ClickHouseSink

log = logging.getLogger("flows.worker")
PRUNE_EVERY_S = 300.0
# Seal the edges of days with new rows this often (sql/004_edges.sql): a day leaves flows' window
# ttl_days - 2 days after its last live rows, so any interval of minutes keeps history whole.
# A pass seals at most SEAL_MAX_DAYS (it holds up the consume loop); with more waiting (after an
# upgrade or a long outage) the next pass comes after SEAL_BACKLOG_S.
SEAL_EVERY_S = 300.0
SEAL_MAX_DAYS = 3
SEAL_BACKLOG_S = 10.0
# Claims replayed at start that were observed within this are still repaired with (see _apply_owner).
BOOTSTRAP_RECENT_NS = 3600 * 10**9
EXPIRE_OWNERSHIP_EVERY_S = 3600.0  # claims expire by the day: hourly keeps the table within a day of its window
# The batch path allocates a few objects per line: at the interpreter's default (a collection every
# 700 allocations) the collector ran every ~100 lines, and its full passes walked the registry and
# the client buffers; decoding an envelope took 2.8 us a line with it, 1.6 us with these
# (docs/performance.md). Garbage cycles wait for 50 000 allocations at most.
GC_THRESHOLDS = (50_000, 20, 10)
# Owner events applied per turn of the consume loop, their claims written before the next turn's: a
# burst (the topic read again, an inventory, a week of churn) goes through in slices, so few events
# are alive at once. 50 000 a turn left ~90 MB of the interpreter's arenas resident after 500 000
# claims, pinned by the few objects that outlived each slice; 5 000 left ~60 (docs/performance.md).
OWNERS_PER_POLL = 5_000
# Claims written since the heap was last given back past which it is given back again (a burst: the
# owners topic read again, an inventory, written in many small writes; a steady watch takes a while).
TRIM_AFTER_CLAIMS = 10_000
FINAL_FLUSH_S = 3.0  # SIGTERM must stop us within seconds; what is not flushed by then is replayed
# A revoked worker's batch is inserted and committed within this, or abandoned: no new attempt, and
# the hand-over waits for the attempt running, which the server ends within INSERT_ATTEMPT_S. The sum
# stays below the group's rebalance timeout, so nothing of ours lands after the partition moved.
REVOKE_FLUSH_S = 30.0
assert REVOKE_FLUSH_S + INSERT_ATTEMPT_S < REBALANCE_TIMEOUT_MS / 1000


class _FlushOnRevoke(ConsumerRebalanceListener):
    """Finish (insert and commit) or abandon what we hold before partitions move to another worker."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            await self.worker.hand_over({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("assigned %s", sorted(tp.partition for tp in assigned))
        self.worker.ready.set()


class Worker:
    def __init__(self, settings: Settings, sink: ClickHouseSink, registry: OwnershipRegistry | None = None) -> None:
        self.settings = settings
        self.sink = sink
        self.registry = registry or OwnershipRegistry(
            history_ns=settings.history_ns, grace_ns=settings.delete_grace_s * 10**9,
            iface_prefix=settings.iface_prefix)
        self.ready = asyncio.Event()
        self.batch = Batch()
        self.offsets: dict[TopicPartition, int] = {}
        self.pending_owners: list[OwnerEvent] = []
        self._claims_since_trim = 0  # claims written since release_free_heap last ran after writes
        self.batch_started = 0.0
        self.lag: dict[int, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.received = 0  # records (and undecodable messages) taken from Kafka by this process
        self.records_per_message = float(MAX_BATCH_RECORDS)  # assume full envelopes until measured
        # Batch bytes (Batch.approx_bytes) a message adds. Until measured, one message takes the whole byte
        # bound: the first fetch takes one message, whatever its size (assuming full envelopes of unknown size,
        # it took batch_max_records / 500 of them: 88 messages, 5.3 MB, seen with 60 KB records).
        self.bytes_per_message = float(settings.batch_max_bytes)
        self.totals: dict[str, int] = {}
        self.newest_owner_ns = 0
        self.hold = Hold(settings.hold_max_s, settings.hold_max_records)
        self.watermarks: dict[str, int] = {}  # source -> complete_to_ns, from the owners topic
        self._owners_changed = False  # since the hold was last released
        self._changed_keys: set[str] = set()  # keys (``claim_keys``) of the claims applied since then
        self.next_offsets: dict[TopicPartition, int] = {}  # after the last record taken, per partition
        # A repair must not run before the batch that was being built when that ownership arrived is
        # stored (its rows were attributed without it): batches are numbered, commits remembered.
        self.batch_seq = 0
        self.stored_seq = -1
        self.next_seal = 0.0  # the first pass right after start: history a dead worker left unsealed
        self.next_expiry = 0.0
        self._bootstrapping = False  # reading the owners topic from its start (_bootstrap_owners)
        # Every flows row this process stores carries this id and its batch's number (sql/011_attribution_marks.sql).
        self.worker_id = secrets.randbits(64) or 1
        self.repairs = Repairs(sink, self.registry, settings.iface_prefix, settings.repair_interval_s, self.shards,
                               self.worker_id)
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._raw: Any = None
        self._owners: Any = None
        self._owners_probe: Any = None  # asks the owners topic's end offsets (owners_topic.read_to_end)
        self._inflight: asyncio.Task[bool] | None = None
        # The repair page under way: the loop goes on taking records while it runs (awaited in the loop, a
        # page waited for the insert in flight ahead of it on the ClickHouse thread, and the drain with it).
        self._repair_page: asyncio.Task[None] | None = None
        self._abandon = asyncio.Event()  # set: the in-flight batch's partitions are being handed on
        self._handing_over = False  # a revoke is being served (hand_over)
        self.generation = 0  # revokes seen: records fetched before one are not taken after it

    # -- owners ------------------------------------------------------------
    def _apply_owner(self, msg: Any, ev: OwnerEvent | Progress | None) -> None:
        if ev is None:  # compaction tombstone
            return
        if isinstance(ev, Progress):
            if "/" not in ev.source and ev.complete_to_ns > self.watermarks.get(ev.source, -1):
                self.watermarks[ev.source] = ev.complete_to_ns
                self._owners_changed = True
                metrics.OWNERS_WATERMARK.set(self.watermark_ns / 1e9)
            metrics.OWNER_EVENTS.labels("progress").inc()
            return
        # Before applying: whether the registry held this claim already says from when destination
        # answers may change. At start the whole topic is applied again: a claim observed long before
        # was repaired with by the worker that ran then (a running worker repairs within seconds), so
        # only recent ones are learned, lest every restart classify the whole flows window again.
        dest = None if self._bootstrapping and ev.observed_ns < time.time_ns() - BOOTSTRAP_RECENT_NS \
            else destination_change(self.registry, ev)
        if self.registry.apply(ev):
            self.pending_owners.append(ev)
            self._owners_changed = True
            if self.hold:
                self._changed_keys.update(claim_keys(ev, self.settings.iface_prefix))
            self.repairs.learned(ev.valid_from_ns, self.batch_seq, dest)
        metrics.OWNER_EVENTS.labels(ev.kind).inc()
        self.newest_owner_ns = max(self.newest_owner_ns, ev.observed_ns)

    def _owners_read(self, read: int) -> None:
        if read:
            metrics.OWNED_IPS.set(self.registry.stats().get("ips", 0))

    @property
    def watermark_ns(self) -> int:
        """Ownership is complete up to here: the furthest any publisher declared (0: none did)."""
        return max(self.watermarks.values(), default=0)

    @property
    def settled_ns(self) -> int:
        """Records up to here are attributed with what is known; later ones may wait for ownership."""
        return self.watermark_ns - int(self.settings.ownership_allowance_s * 1e9)

    async def _load_stored_owners(self) -> None:
        """Seed the registry from the ownership history in ClickHouse.

        The topic is the source of truth, but the embedded broker forgets it on a
        restart while chDB keeps the history: without this, a restarted embedded
        stack would resolve nothing until the inventory is loaded again.
        """
        await self.sink.call(record_rule_settings, self.sink.client(), self.settings.delete_grace_s)
        client, history_ns = self.sink.client(), self.settings.history_ns
        after: ClaimKey | None = FIRST_CLAIM
        seeded = 0
        while after is not None:  # a page at a time: a million claims must fit the worker's memory limit
            events, after = await self.sink.call(ownership_page, client, history_ns, after)
            if after is None:
                events += await self.sink.call(load_endpoints, client, history_ns)
            for ev in events:
                self.registry.apply(ev)
            seeded += len(events)
        if seeded:
            log.info("registry seeded with %d stored ownership claims", seeded)

    async def _bootstrap_owners(self) -> None:
        """Read the owners topic to its end before enriching anything."""
        await owners_topic.rewind(self._owners, self.settings.owners_topic)
        self._bootstrapping = True
        try:
            self._owners_read(await owners_topic.read_to_end(self._owners, self._apply_owner, self._owners_probe))
        finally:
            self._bootstrapping = False
        log.info("registry bootstrapped: %s", self.registry.stats())

    async def _poll_owners(self) -> bool:
        """Apply the owner events fetched already, at most OWNERS_PER_POLL; True when more are waiting
        (fetched, or on the broker past our position as of the last fetch)."""
        data = await self._owners.getmany(timeout_ms=0, max_records=OWNERS_PER_POLL)
        read = sum(owners_topic.dispatch(messages, self._apply_owner) for messages in data.values())
        self._owners_read(read)
        if read >= OWNERS_PER_POLL:
            return True
        for tp in self._owners.assignment():
            end = self._owners.highwater(tp)
            if end is not None and await self._owners.position(tp) < end:
                return True
        return False

    async def _sync_owners(self) -> None:
        """Apply every owner event acknowledged before now: called after a raw fetch, it makes
        ownership published before those records were produced known before they are enriched."""
        self._owners_read(await owners_topic.read_to_end(self._owners, self._apply_owner, self._owners_probe))

    # -- raw records -------------------------------------------------------
    def _take(self, tp: TopicPartition, messages: list[Any]) -> None:
        """Decode a partition's fetched messages and enrich their records as one batch (``add_records``):
        all at once into columns when they are all our envelopes (``decode_columns``), else one by one."""
        at_once = decode_columns([msg.value for msg in messages])
        if at_once is not None:
            columns, counts = at_once
            offsets = [msg.offset for msg in messages] if counts.count(1) == len(counts) else \
                [msg.offset for msg, n in zip(messages, counts, strict=True) for _ in range(n)]
            self.received += len(columns)
            self.offsets[tp] = messages[-1].offset + 1
            self._enrich(tp, columns, offsets)
            self.next_offsets[tp] = self.offsets[tp]
            metrics.RECORDS.labels("received").inc(len(columns))
            return
        records: list[RawRecord] = []
        offsets: list[int] = []
        received = self.received
        for msg in messages:
            decoded, errors = decode_message(msg.value, msg.timestamp)
            self.received += len(decoded) + len(errors)
            if errors:  # in arrival order: an envelope error's id may equal a record's
                self._enrich(tp, records, offsets)
                records, offsets = [], []
                for err in errors:
                    self.batch.add_envelope_error(err, msg.timestamp * 1_000_000, tp.partition, msg.offset)
            records += decoded
            offsets += [msg.offset] * len(decoded)
            self.offsets[tp] = msg.offset + 1
        self._enrich(tp, records, offsets)
        self.next_offsets[tp] = self.offsets[tp]
        metrics.RECORDS.labels("received").inc(self.received - received)  # once a fetch: one-record messages

    def _enrich(self, tp: TopicPartition, records: list[RawRecord] | RecordColumns, offsets: list[int]) -> None:
        s = self.settings
        now = time.monotonic()
        for waiting in add_records(self.batch, records, offsets, self.registry, s.log_prefix, s.iface_prefix,
                                   tp.partition, self.settled_ns):
            self.hold.add(waiting, now)

    def _release_held(self) -> None:
        """Move held records that may go now into the batch (see ``Hold``)."""
        before = dict(self.hold.released)
        self.hold.release(self.batch, self.registry, self.settings.iface_prefix, self.settled_ns,
                          time.monotonic(), self._changed_keys)
        self._owners_changed = False
        self._changed_keys.clear()
        for outcome, n in self.hold.released.items():
            metrics.HOLD_RELEASED.labels(outcome).inc(n - before[outcome])
        metrics.HELD.set(len(self.hold))

    def _commit_offsets(self, taken: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Offsets to commit for a batch: never past a record still held."""
        first_held = self.hold.first_offsets()
        out = {}
        for tp, offset in taken.items():
            offset = min(offset, first_held.get(tp.partition, offset))
            if offset > self.committed.get(tp, -1):
                out[tp] = offset
        return out

    def _has_batch(self) -> bool:
        return bool(self.offsets) or self.batch.flow_rows + self.batch.reject_rows > 0

    async def flush(self, wait: bool = True, handing_over: bool = False) -> bool:
        """Hand the current batch to the sink; its offsets are committed once ClickHouse confirmed it.

        At most one insert is in flight: the next batch is parsed and enriched
        while the previous one is being inserted, and a batch's insert starts
        only after the previous one was committed, so commits stay in order and
        the replay check of a batch sees every row before it. With ``wait`` the
        call returns after this batch is committed. False when stopped before
        an insert succeeded (nothing after it is committed then). While partitions are handed
        over, only the hand-over's own flush starts an insert: one started by the consume loop
        after it would carry records taken before the revoke past it.
        """
        async with self._lock:
            if not await self._settle() or self._abandon.is_set() or (self._handing_over and not handing_over):
                return False
            if not self._has_batch() and not self.pending_owners:
                return True
            batch, offsets, owners = self.batch, self._commit_offsets(self.next_offsets), list(self.pending_owners)
            self.batch, self.offsets, self.pending_owners = next_batch(batch), {}, []
            seq, self.batch_seq = self.batch_seq, self.batch_seq + 1
            batch.flow_data.attributed = (self.worker_id, seq)
            self._inflight = asyncio.create_task(self._write_and_commit(batch, offsets, owners, seq))
            return await self._settle() if wait else True

    async def hand_over(self, partitions: set[int]) -> None:
        """Partitions are being revoked: be done with everything taken from them before returning.

        The batch is inserted and committed within REVOKE_FLUSH_S, or abandoned: the sink starts
        no further attempt, and this waits for the attempt running now (ClickHouse ends it within
        INSERT_ATTEMPT_S) instead of leaving it to land after the next owner started on the same
        offsets. Nothing taken and not committed is kept, held records included (the commit never
        passed them): aiokafka's rebalances are eager (every partition is revoked, and every
        position restarts from the committed offset at the next assignment), so the next owner
        replays it, and the replay check drops whatever did land.
        """
        self.generation += 1
        self._handing_over = True
        try:
            if not await self._flush_within(REVOKE_FLUSH_S, handing_over=True):
                log.warning("batch not stored within %.0f s of a rebalance: abandoned, the next owner of "
                            "partitions %s replays it", REVOKE_FLUSH_S, sorted(partitions))
        finally:  # the consume loop may flush again only once the batch taken before the revoke is gone
            await self.repairs.abandon()
            self.batch, self.offsets = Batch(), {}
            self.hold.drop_partitions(partitions)
            for tp in [tp for tp in self.next_offsets if tp.partition in partitions]:
                del self.next_offsets[tp]
            self._handing_over = False

    async def _flush_within(self, seconds: float, handing_over: bool = False) -> bool:
        """Flush; after ``seconds`` abandon the batch, but return only once the insert attempt
        running then has returned (cancelling the wait would leave it running on the sink's
        thread, free to land after our partitions moved). False: the batch was not committed."""
        flushing = asyncio.ensure_future(self.flush(handing_over=handing_over))
        done, _ = await asyncio.wait({flushing}, timeout=seconds)
        if not done:
            self._abandon.set()
        try:
            return await flushing
        finally:
            self._abandon.clear()

    async def _rewind(self, tps: list[TopicPartition]) -> None:
        """Records of ``tps`` were fetched but not taken: fetch them again from the committed offset."""
        for tp in tps:
            # revoked meanwhile: nothing to rewind, an assignment starts from the committed offset
            with contextlib.suppress(IllegalStateError):
                offset = await self._raw.committed(tp)
                if offset is None:
                    await self._raw.seek_to_beginning(tp)
                else:
                    self._raw.seek(tp, offset)

    async def _settle(self) -> bool:
        if self._inflight is None:
            return True
        try:
            return await self._inflight
        finally:
            self._inflight = None

    async def _write_and_commit(self, batch: Batch, offsets: dict[TopicPartition, int],
                                owners: list[OwnerEvent], seq: int) -> bool:
        started = time.perf_counter()
        written = await self.sink.write(batch, owners, self._stop, self._abandon)
        if written is None:
            self.pending_owners[:0] = owners  # claims are not partitioned: they go with the next batch
            return False
        log.debug("flushed %d flows, %d rejects, %d owner rows in %.3f s", written["flows"],
                  written["rejects"], written["ownership"], time.perf_counter() - started)
        self._claims_since_trim += written["ownership"]
        if self._claims_since_trim >= TRIM_AFTER_CLAIMS:
            self._claims_since_trim = 0
            release_free_heap()
        if offsets:
            try:
                await self._raw.commit(offsets)
                metrics.OFFSETS_COMMITTED.inc()
            except (CommitFailedError, KafkaError) as exc:
                # Inserted but not committed: the records come back and are dropped as replays.
                log.warning("offset commit failed after insert (%s); replays will be deduplicated", exc)
        self._account(batch, written)
        self.committed.update(offsets)
        self.stored_seq = seq
        return True

    def shards(self) -> tuple[tuple[int, ...], int]:
        """This worker's share of repair work: its assigned raw partitions, of how many."""
        raw = self.settings.raw_topic
        total = len(self._raw.partitions_for_topic(raw) or ()) if self._raw is not None else 0
        mine = tuple(sorted(tp.partition for tp in self._raw.assignment() if tp.topic == raw)) if total else ()
        return mine, max(total, 1)

    async def _seal_if_due(self) -> None:
        """Seal the edges of days that got rows since their last seal, at most every SEAL_EVERY_S.

        Every worker does it: seals are versioned snapshots, so concurrent passes are harmless.
        """
        if time.monotonic() < self.next_seal or self.sink.last_error:  # not while inserts fail
            return
        self.next_seal = time.monotonic() + SEAL_EVERY_S
        try:
            days = await self.sink.call(seal_edges, self.sink.client(), SEAL_MAX_DAYS)
        except Exception as exc:  # flows still holds the rows: the next pass seals them
            log.warning("sealing edges failed: %s", exc)
            return
        if len(days) == SEAL_MAX_DAYS:
            self.next_seal = time.monotonic() + SEAL_BACKLOG_S
        if days:
            log.info("sealed the edges of %d day(s), %s .. %s", len(days), days[0], days[-1])

    async def _expire_ownership_if_due(self) -> None:
        """Keep the claim tables to the history window (at most every EXPIRE_OWNERSHIP_EVERY_S)."""
        if time.monotonic() < self.next_expiry:
            return
        self.next_expiry = time.monotonic() + EXPIRE_OWNERSHIP_EVERY_S
        try:
            deleted = await self.sink.call(expire_ownership, self.sink.client(), self.settings.history_ns,
                                           self.settings.delete_grace_s * 10**9)
        except Exception as exc:  # the tables only grow until the next pass
            log.warning("expiring old ownership claims failed: %s", exc)
            return
        if any(deleted.values()):
            log.info("deleted %d ownership and %d endpoint claims that ended before the history window",
                     deleted["ownership"], deleted["endpoint_claims"])

    def _account(self, batch: Batch, written: dict[str, int]) -> None:
        counts = batch.counts
        for outcome in ("parsed", "rejected", "ignored", "duplicate"):
            metrics.RECORDS.labels(outcome).inc(counts[outcome])
            self.totals[outcome] = self.totals.get(outcome, 0) + counts[outcome]
        metrics.RECORDS.labels("replayed").inc(written["replayed"])
        metrics.ENVELOPE_REJECTS.inc(counts["envelope_rejected"])
        metrics.UNATTRIBUTED.inc(counts["unattributed"])
        for key, value in counts.items():
            if key.startswith("source_"):
                metrics.SOURCE_MATCH.labels(key[7:]).inc(value)
        self.totals["replayed"] = self.totals.get("replayed", 0) + written["replayed"]
        self.totals["envelope_rejected"] = self.totals.get("envelope_rejected", 0) + counts["envelope_rejected"]
        self.totals["stored"] = self.totals.get("stored", 0) + written["flows"]
        self.totals["quarantined"] = self.totals.get("quarantined", 0) + written["quarantined"]
        if batch.flow_ts:
            metrics.NEWEST_RECORD.set(max(batch.flow_ts) / 1e9)

    async def _watch_lag(self, every_s: float = 2.0) -> None:
        """Lag = records in Kafka not yet confirmed in ClickHouse (end offset - committed offset).

        Runs beside the consume loop so that it keeps moving while inserts are
        blocked and the loop is not fetching: that is when an operator needs it.
        """
        consumer = self._raw
        while True:
            tps = sorted(consumer.assignment(), key=lambda tp: tp.partition)
            try:
                ends = await consumer.end_offsets(tps) if tps else {}
                for tp in tps:
                    if tp not in self.committed:
                        self.committed[tp] = await consumer.committed(tp) or (
                            await consumer.beginning_offsets([tp]))[tp]
                    self.lag[tp.partition] = max(0, ends[tp] - self.committed[tp])
                    metrics.CONSUMER_LAG.labels(str(tp.partition)).set(self.lag[tp.partition])
                for p in set(self.lag) - {tp.partition for tp in tps}:
                    del self.lag[p]
            except KafkaError as exc:
                log.debug("lag check: %s", exc)
            await asyncio.sleep(every_s)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; then flush what was taken and commit it."""
        s = self.settings
        self._stop = stop
        # A catch-up that finds new owner messages waits for this consumer's fetch to bring them: at most
        # FETCH_MAX_WAIT_MS on the embedded broker, which lets a fetch wait out its time even when data
        # arrives (0.16-0.26 s at aiokafka's 500 ms, 0.07 s at 100 ms).
        self._owners = make_consumer(s, group_id=None, enable_auto_commit=False)
        self._raw = make_consumer(s, group_id=s.consumer_group, max_poll_records=s.batch_max_records)
        self._owners_probe = make_consumer(s, group_id=None, enable_auto_commit=False)
        await self._owners.start()
        await self._owners_probe.start()
        try:
            await self._load_stored_owners()
            await self._owners.topics()  # loads cluster metadata so the owners partitions are known
            await self._bootstrap_owners()
            prepare_columns()
            gc.set_threshold(*GC_THRESHOLDS)
            gc.freeze()  # what start-up built (the seeded registry, clients) is never collected: not walked again
            release_free_heap()  # what reading the owners topic and the stored claims freed
            await self._raw.start()
            self._raw.subscribe([s.raw_topic], listener=_FlushOnRevoke(self))
            lag_task = asyncio.create_task(self._watch_lag())
            last_prune = time.monotonic()
            while not stop.is_set():
                owners_behind = await self._poll_owners()
                if self.hold:
                    had = self._has_batch()
                    if self._owners_changed:  # a watermark must not be used before the claims sent before it
                        await self._sync_owners()
                    self._release_held()
                    if not had and self._has_batch():
                        self.batch_started = time.monotonic()
                remaining = s.batch_max_s - (time.monotonic() - self.batch_started) if self._has_batch() \
                    else s.batch_max_s
                if self.repairs.current is not None or owners_behind:  # no waiting for records: more to do
                    remaining = 0.0
                room = s.batch_max_records - self.batch.flow_rows - self.batch.reject_rows
                byte_room = s.batch_max_bytes - self.batch.approx_bytes
                generation = self.generation
                fetch = asyncio.ensure_future(self._raw.getmany(  # max_records counts messages, not records
                    timeout_ms=max(10, int(remaining * 1000)),
                    max_records=max(1, int(min(room / self.records_per_message, byte_room / self.bytes_per_message)))))
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait({fetch, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                data = fetch.result() if fetch.done() else {}
                if not fetch.done():
                    fetch.cancel()
                taken = 0
                before, bytes_before = self.received, self.batch.approx_bytes
                if data:
                    await self._sync_owners()
                if data and generation != self.generation:  # fetched before a revoke: not ours to take
                    await self._rewind(list(data))
                    data = {}
                for tp, messages in data.items():
                    if not self._has_batch():
                        self.batch_started = time.monotonic()
                    self._take(tp, messages)
                    taken += len(messages)
                if taken:  # records per message: 1 from fluent-bit, up to 500 from our shippers
                    self.records_per_message = max(1.0, (self.received - before) / taken)
                    self.bytes_per_message = max(1.0, (self.batch.approx_bytes - bytes_before) / taken)
                full = (self.batch.flow_rows + self.batch.reject_rows >= s.batch_max_records
                        or self.batch.approx_bytes >= s.batch_max_bytes)
                expired = self._has_batch() and time.monotonic() - self.batch_started >= s.batch_max_s
                if full or expired or (self.pending_owners and not self._has_batch()):
                    await self.flush(wait=False)
                if self._repair_page is None or self._repair_page.done():
                    self._repair_page = asyncio.create_task(self._repair_step())
                await self._seal_if_due()
                if time.monotonic() - last_prune > PRUNE_EVERY_S:
                    self.registry.prune(time.time_ns())
                    release_free_heap()
                    last_prune = time.monotonic()
                    await self._expire_ownership_if_due()
            if self._repair_page is not None:  # its rows are stored before the last commit
                await self._repair_page
            await self.flush_on_stop()
            lag_task.cancel()
        finally:
            if self._repair_page is not None and not self._repair_page.done():  # the loop failed
                self._repair_page.cancel()
            await self._shutdown()

    async def _repair_step(self) -> None:
        """One page of attribution repair, beside the consume loop (a pass that fails is learned again
        and retried by Repairs itself; anything else is logged here, as nothing awaits this)."""
        try:
            await self.repairs.step_if_due(self.stored_seq, time.time_ns() + FUTURE_SLACK_NS)
        except Exception:
            log.exception("attribution repair step failed")

    async def flush_on_stop(self) -> None:
        """A last flush; the stop event is cleared for it so one insert attempt can finish."""
        if self._has_batch() or self.pending_owners or self._inflight is not None:
            self._stop = asyncio.Event()
            if not await self._flush_within(FINAL_FLUSH_S):
                log.warning("final flush did not finish in %.0f s; its records are replayed on restart", FINAL_FLUSH_S)

    async def _shutdown(self) -> None:
        for consumer in (self._raw, self._owners, self._owners_probe):
            if consumer is not None:
                try:
                    await asyncio.wait_for(consumer.stop(), timeout=5)
                except (TimeoutError, KafkaError) as exc:
                    log.warning("consumer stop: %s", exc)

    def conservation(self) -> dict[str, int]:
        """received = stored + replayed + rejected + ignored + duplicate + envelope_rejected + pending."""
        t = self.totals
        pending = self.batch.counts
        accounted = sum(t.get(k, 0) for k in ("parsed", "rejected", "ignored", "duplicate", "envelope_rejected"))
        in_batch = sum(pending[k] for k in ("parsed", "rejected", "ignored", "duplicate", "envelope_rejected"))
        return {"received": self.received, "accounted": accounted, "pending": self.received - accounted,
                "in_current_batch": in_batch}

    def status(self) -> dict[str, Any]:
        return {
            "conservation": self.conservation(),
            # not ready while inserts are blocked: the probe and `flows status` must show a stuck worker
            "ready": self.ready.is_set() and self.sink.blocked_s() < self.settings.insert_blocked_ready_s,
            "lag": dict(self.lag),
            "totals": dict(self.totals),
            "batch_pending_records": self.batch.flow_rows + self.batch.reject_rows,
            "registry": self.registry.stats(),
            "newest_owner_event_ns": self.newest_owner_ns,
            "owners_watermark_ns": self.watermark_ns,
            "held_records": len(self.hold),
            "hold_released": dict(self.hold.released),
            "repaired_rows": self.repairs.repaired,
            "insert_blocked": bool(self.sink.last_error),
            "insert_blocked_s": round(self.sink.blocked_s(), 1),
            "last_insert_error": self.sink.last_error,
        }
