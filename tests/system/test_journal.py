"""`flows ship journal` on real journal files: exact answers, resume after kill -9, SIGTERM flush.

The journals are written by systemd-journal-remote from journal export format. The shipper follows
one file holding every node's entries (what journal-remote writes with --split-mode=none): in one
file entries have one order, so following and resuming are exact. Following a directory of
several hosts' files is not: journalctl's merged follow drops entries that arrive in one file
older than what it already printed from another (a host's own journal is written in time order,
so the live case is not affected); a directory is read to its end here, without --follow.
Each file assigns its own cursors, so the corpus' upstream duplicates are dropped before writing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from pipeline.basics.config import Settings
from pipeline.sources.journal import JournalSource, default_checkpoint, journalctl_argv
from pipeline.tooling.synthetic import generate
from tests.conftest import ROOT, flows_env
from tests.system.test_e2e import fanout_of, load_inventory

JOURNAL_REMOTE = next((p for p in (shutil.which("systemd-journal-remote"), "/lib/systemd/systemd-journal-remote",
                                   "/usr/lib/systemd/systemd-journal-remote") if p and os.path.exists(p)), None)
needs_journal_tools = pytest.mark.skipif(
    JOURNAL_REMOTE is None or shutil.which("journalctl") is None,
    reason="needs journalctl and systemd-journal-remote (Debian: apt-get install systemd systemd-journal-remote)")
FLUSH = 500
PREFIX = Settings.model_fields["log_prefix"].default


def shipper_argv(*args: str) -> list[str]:
    """`flows ship journal …` as a real process."""
    return [sys.executable, "-m", "pipeline", "ship", "journal", *args]


def export_format(entries: list[dict]) -> bytes:
    """Journal export format: KEY=value lines, a blank line after each entry (values here are one line)."""
    out = bytearray()
    for entry in entries:
        for key, value in entry.items():
            assert "\n" not in value
            out += f"{key}={value}\n".encode()
        out += b"\n"
    return bytes(out)


def write_journal(path: Path, entries: list[dict]) -> None:
    """Append entries to a journal file (created when missing), as journald would have stored them."""
    assert JOURNAL_REMOTE is not None
    proc = subprocess.run([JOURNAL_REMOTE, f"--output={path}", "-"], input=export_format(entries),
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()


def checkpoint_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())["state"]
    except (OSError, ValueError, KeyError):
        return {}


def wait_until(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_journalctl_command_line():
    follow = journalctl_argv(JournalSource(directory=Path("/j"), follow=True), "s=1;i=2")
    assert follow[-1] == "_TRANSPORT=kernel"
    assert {"--output=json", "--all", "--directory=/j", "--follow", "--no-tail", "--merge",
            "--after-cursor=s=1;i=2"} <= set(follow)
    once = journalctl_argv(JournalSource(files=("a.journal", "b*.journal"), current_boot=True), None)
    assert {"--file=a.journal", "--file=b*.journal", "--boot"} <= set(once)
    assert not any(a.startswith(("--follow", "--merge", "--after-cursor")) for a in once)
    with pytest.raises(ValueError, match="cannot be combined"):
        JournalSource(files=("a",), directory=Path("/j"))
    settings = Settings(home=Path("/h"))
    paths = {default_checkpoint(settings, s) for s in (JournalSource(), JournalSource(files=("a",)),
                                                        JournalSource(directory=Path("/j")))}
    assert len(paths) == 3 and all(p.parent == Path("/h/checkpoints") for p in paths)
    assert default_checkpoint(settings, JournalSource(follow=True)) == default_checkpoint(settings, JournalSource())


def test_checkpoint_of_another_journal_is_refused(tmp_path):
    cp = tmp_path / "cp.json"
    cp.write_text(json.dumps({"version": 1, "kind": "journal",
                              "state": {"cursor": "s=1", "shipped": 3, "source": "local"}}))
    proc = subprocess.run(shipper_argv("--directory", str(tmp_path), "--checkpoint", str(cp)),
                          env=flows_env(tmp_path / "home", 1, FLOWS_KAFKA_BOOTSTRAP="127.0.0.1:1"),
                          capture_output=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert "belongs to journal source 'local'" in proc.stderr.decode()


@needs_journal_tools
def test_directory_of_node_journals_reads_kernel_entries_and_resumes_at_a_cursor(tmp_path):
    """One journal file per node, as a copied /var/log/journal tree holds them; no broker needed."""
    entries = [orjson.loads(line) for line in generate(seed=5, namespaces=6, records=300).journal]
    distinct = {e["__CURSOR"]: e for e in entries}.values()
    by_node: dict[str, list[dict]] = {}
    for entry in sorted(distinct, key=lambda e: int(e["__REALTIME_TIMESTAMP"])):
        by_node.setdefault(entry["_HOSTNAME"], []).append(entry)
    for node, node_entries in by_node.items():
        write_journal(tmp_path / f"{node}.journal", node_entries)
    source = JournalSource(directory=tmp_path)

    def read(cursor: str | None) -> list[dict]:
        out = subprocess.run(journalctl_argv(source, cursor), capture_output=True, timeout=60, check=True).stdout
        return [orjson.loads(line) for line in out.splitlines()]

    everything = read(None)
    assert len(everything) == sum(e["_TRANSPORT"] == "kernel" for e in distinct)
    assert {e["MESSAGE"] for e in everything} == {e["MESSAGE"] for e in distinct if e["_TRANSPORT"] == "kernel"}
    assert set(everything[0]) <= {"MESSAGE", "_HOSTNAME", "__CURSOR", "__REALTIME_TIMESTAMP",
                                  "__MONOTONIC_TIMESTAMP", "_BOOT_ID", "__SEQNUM", "__SEQNUM_ID"}
    cut = len(everything) // 3
    assert read(everything[cut - 1]["__CURSOR"]) == everything[cut:]


@pytest.mark.slow
@needs_journal_tools
def test_journal_files_exact_through_kill_follow_and_sigterm(stack_factory, tmp_path):
    corpus = generate(seed=23, namespaces=16, records=3_000)
    entries: dict[str, dict] = {}
    for line in corpus.journal:  # one journal entry per distinct corpus entry
        entry = orjson.loads(line)
        entries.setdefault(entry["__CURSOR"], entry)
    ordered = sorted(entries.values(), key=lambda e: int(e["__REALTIME_TIMESTAMP"]))

    def calico(batch: list[dict]) -> int:
        return sum(e["_TRANSPORT"] == "kernel" and PREFIX in e["MESSAGE"] for e in batch)

    exp = corpus.expected
    total = calico(ordered)
    assert total == exp.records + exp.rejected  # malformed lines carry the prefix and become rejects
    assert len(ordered) > total  # kubelet (stdout transport) and other kernel lines must be skipped
    half = len(ordered) // 2
    n_first = calico(ordered[:half])
    assert n_first % FLUSH, "the first half must leave records unsaved when the shipper is killed"
    journal = tmp_path / "cluster.journal"
    write_journal(journal, ordered[:half])

    stack = stack_factory().start()
    load_inventory(stack, corpus, tmp_path)
    cp = tmp_path / "journal-checkpoint.json"
    args = ("--file", str(journal), "--checkpoint", str(cp), "--flush-records", str(FLUSH),
            "--flush-interval", "3600")

    def start_follower() -> subprocess.Popen:
        return subprocess.Popen(shipper_argv(*args, "--follow"), env=stack.env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    # 1. Follow the first half; kill -9 once every full batch is saved: the rest was never acknowledged.
    a = start_follower()
    saved_a = n_first // FLUSH * FLUSH
    wait_until(lambda: checkpoint_state(cp).get("shipped") == saved_a, f"{saved_a} records saved")
    os.kill(a.pid, signal.SIGKILL)
    a.wait()
    cursor_a = checkpoint_state(cp)["cursor"]

    # 2. Resume following; the second half arrives while it runs; SIGTERM flushes and saves the rest.
    b = start_follower()
    time.sleep(1)
    write_journal(journal, ordered[half:])
    wait_until(lambda: checkpoint_state(cp).get("shipped", 0) >= total // FLUSH * FLUSH, "the second half")
    time.sleep(1)  # let it read the last partial batch, which only SIGTERM's flush saves
    started = time.monotonic()
    b.send_signal(signal.SIGTERM)
    assert b.wait(10) == 0, b.stderr.read().decode()
    assert time.monotonic() - started < 5
    b_out = b.stderr.read().decode()
    state = checkpoint_state(cp)
    assert state["shipped"] == total and state["cursor"] != cursor_a, b_out
    assert f"shipped {total - saved_a} records" in " ".join(b_out.split()), b_out

    # 3. Nothing left: a run to the end of the journal ships nothing.
    c = subprocess.run(shipper_argv(*args), env=stack.env, cwd=ROOT, capture_output=True, timeout=60)
    assert c.returncode == 0 and "shipped 0 records" in c.stderr.decode(), c.stderr.decode()

    summary = stack.wait_for_stored(exp.records, exp.rejected)
    assert (summary["records"], summary["rejected"], summary["unattributed"]) == (
        exp.records, exp.rejected, exp.unowned_sources)
    assert fanout_of(stack) == exp.fanout
    assert stack.json("sql", "SELECT count() AS n, uniqExact(record_id) AS u FROM flows") == [
        {"n": exp.records, "u": exp.records}]

    # A cursor journalctl cannot use is reported, not skipped over.
    cp.write_text(json.dumps({"version": 1, "kind": "journal",
                              "state": {"cursor": "garbage", "shipped": 0, "source": state["source"]}}))
    bad = subprocess.run(shipper_argv(*args), env=stack.env, cwd=ROOT, capture_output=True, timeout=60)
    assert bad.returncode == 2 and "journalctl failed" in bad.stderr.decode(), bad.stderr.decode()
