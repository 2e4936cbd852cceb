"""Shipping the systemd journal to the raw topic, resuming from a cursor saved after Kafka's ack.

For hosts without fluent-bit (and for tests): ``journalctl -o json`` reads the live journal or
exported/copied journal files, matched to the kernel transport; entries carrying the Calico log
prefix go through ``RecordProducer``. After each flush the broker has acknowledged, the cursor of
the last entry read is saved, and a restart passes it to ``--after-cursor``: nothing is lost, and
at most what was sent after the last save is sent again (same entries, same record identities, so
the worker drops those as replays). A send Kafka does not acknowledge stops shipping before the
cursor is saved past it (``shipper.SendFailed``). Skipped entries advance the cursor too: a restart
does not rescan them.

Why journalctl and not libsystemd bindings: it is on every systemd host, reads every journal file
format version its host writes, and keeps this module free of a C dependency.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from pipeline.basics.config import Settings
from pipeline.core.envelopes import MAX_JSON_BYTES, EnvelopeError, from_journal_entry
from pipeline.sources.checkpoint import Checkpoint, CheckpointError
from pipeline.sources.shipper import RecordProducer, undecodable_record

log = logging.getLogger("flows.journal")

CHECKPOINT_KIND = "journal"
STOP_GRACE_S = 2.0


@dataclass(frozen=True)
class JournalSource:
    """Which journal to read: the local one (no files, no directory), files/globs, or a directory."""

    files: tuple[str, ...] = ()
    directory: Path | None = None
    follow: bool = False
    current_boot: bool = False

    def __post_init__(self) -> None:
        if self.files and self.directory is not None:
            raise ValueError("--file and --directory cannot be combined: journalctl reads one or the other")

    @property
    def identity(self) -> str:
        """What a checkpoint belongs to: a cursor from another journal would silently skip entries."""
        if self.files:
            return "file:" + ",".join(self.files)
        if self.directory is not None:
            return f"directory:{self.directory.resolve()}"
        return "local"


@dataclass
class JournalStats:
    """Counts of this run; ``total_shipped`` continues the checkpoint's count across runs."""

    entries: int = 0
    shipped: int = 0
    skipped: int = 0
    undecodable: int = 0
    cursor: str | None = None
    total_shipped: int = 0


def default_checkpoint(settings: Settings, source: JournalSource) -> Path:
    """One checkpoint per journal source, as for the Loki shipper."""
    digest = hashlib.sha256(source.identity.encode()).hexdigest()[:16]
    return settings.home / "checkpoints" / f"journal-{digest}.json"


def journalctl_argv(source: JournalSource, cursor: str | None, journalctl: str = "journalctl") -> list[str]:
    """The journalctl command line; kernel transport only, every field in full."""
    argv = [journalctl, "--output=json", "--all", "--quiet", "--no-pager", "--output-fields=MESSAGE,_HOSTNAME"]
    argv += [f"--file={pattern}" for pattern in source.files]
    if source.directory is not None:
        argv.append(f"--directory={source.directory}")
    if source.current_boot:
        argv.append("--boot")
    if source.follow:
        # --follow alone implies the current boot (systemd 252): entries left in the previous boot
        # after a reboot would be skipped. --merge lifts that; --no-tail starts at the cursor/head.
        argv += ["--follow", "--no-tail"] + ([] if source.current_boot else ["--merge"])
    if cursor:
        argv.append(f"--after-cursor={cursor}")
    argv.append("_TRANSPORT=kernel")
    return argv


def _load_cursor(checkpoint: Checkpoint, source: JournalSource) -> tuple[str | None, int]:
    state = checkpoint.load()
    if state is None:
        return None, 0
    cursor, shipped = state.get("cursor"), state.get("shipped", 0)
    if not isinstance(cursor, str) or not cursor or not isinstance(shipped, int):
        raise CheckpointError(f"checkpoint {checkpoint.path} has no valid cursor")
    if state.get("source") != source.identity:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} belongs to journal source {state.get('source')!r}, not "
            f"{source.identity!r}; pass --checkpoint with another file for this source")
    return cursor, shipped


async def _drain(stream: asyncio.StreamReader, tail: collections.deque[str]) -> None:
    """Keep journalctl's stderr flowing (a full pipe would block it) and remember its last lines."""
    async for line in stream:
        tail.append(line.decode("utf-8", "replace").rstrip())


async def _stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def ship_journal(
    settings: Settings, source: JournalSource, checkpoint_path: Path, *, stop: asyncio.Event,
    flush_records: int = 5000, flush_interval_s: float = 1.0, journalctl: str = "journalctl",
) -> JournalStats:
    """Ship until the journal ends (or, following, until ``stop``); the cursor is saved after each ack."""
    with Checkpoint(checkpoint_path, CHECKPOINT_KIND) as checkpoint:
        cursor, total = _load_cursor(checkpoint, source)
        stats = JournalStats(cursor=cursor, total_shipped=total)
        argv = journalctl_argv(source, cursor, journalctl)
        log.debug("running %s", " ".join(argv))
        async with RecordProducer(settings) as producer:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE, limit=MAX_JSON_BYTES)
            except FileNotFoundError:
                raise RuntimeError(f"{journalctl} not found: install systemd's journalctl "
                                   "(Debian: apt-get install systemd) or pass --journalctl") from None
            assert proc.stdout is not None and proc.stderr is not None
            errors: collections.deque[str] = collections.deque(maxlen=5)
            drain = asyncio.create_task(_drain(proc.stderr, errors))
            saved_cursor, unsaved_records = cursor, 0
            dirty_since: float | None = None  # monotonic time of the first entry read since the last save

            async def save() -> None:
                nonlocal saved_cursor, unsaved_records, dirty_since
                await producer.flush()
                dirty_since, unsaved_records = None, 0
                if stats.cursor != saved_cursor:
                    checkpoint.save({"cursor": stats.cursor, "shipped": stats.total_shipped,
                                     "source": source.identity})
                    saved_cursor = stats.cursor

            stopping = asyncio.create_task(stop.wait())
            reading: asyncio.Task[bytes] | None = None
            at_end = False
            try:
                while True:
                    if reading is None:
                        reading = asyncio.create_task(proc.stdout.readline())
                    timeout = None if dirty_since is None else max(
                        0.0, dirty_since + flush_interval_s - time.monotonic())
                    done, _ = await asyncio.wait({reading, stopping}, timeout=timeout,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if stopping in done:
                        break
                    if reading not in done:  # the journal went quiet with entries not yet saved
                        await save()
                        continue
                    line, reading = reading.result(), None
                    if not line:
                        at_end = True
                        break
                    if dirty_since is None:
                        dirty_since = time.monotonic()
                    if await _ship_entry(line, settings.log_prefix, producer, stats):
                        unsaved_records += 1
                    if unsaved_records >= flush_records or time.monotonic() - dirty_since >= flush_interval_s:
                        await save()
            finally:
                for task in (reading, stopping):
                    if task is not None:
                        task.cancel()
                if at_end:
                    await proc.wait()
                else:
                    await _stop_process(proc)
                await drain
            await save()  # what was read is valid even when journalctl then failed
            if at_end and proc.returncode != 0:
                detail = "; ".join(errors) or f"exit status {proc.returncode}"
                raise RuntimeError(f"journalctl failed: {detail}")
            return stats


async def _ship_entry(line: bytes, prefix: str, producer: RecordProducer, stats: JournalStats) -> bool:
    """Decode one journalctl line; True when it became a record to ship (undecodable ones are kept)."""
    stats.entries += 1
    try:
        entry = orjson.loads(line)
        cursor = entry.get("__CURSOR") if isinstance(entry, dict) else None
        if isinstance(cursor, str) and cursor:
            stats.cursor = cursor
        rec = from_journal_entry(entry)
    except (orjson.JSONDecodeError, EnvelopeError) as exc:
        err = exc if isinstance(exc, EnvelopeError) else EnvelopeError("bad_json", str(exc))
        err.raw = line.decode("utf-8", "replace")
        stats.undecodable += 1
        rec = undecodable_record(err, "journal-json")
    else:
        if prefix not in rec.message:
            stats.skipped += 1
            return False
    await producer.add(rec)
    stats.shipped += 1
    stats.total_shipped += 1
    return True
