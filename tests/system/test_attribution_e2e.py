"""Attribution that does not depend on timing, end to end with real processes.

`flows up` (or `flows worker` on a broker of its own), the CLI, and `flows watch k8s` against the
Kubernetes API stand-in. No test waits for ownership to "settle" before shipping: the answer must
be exact whatever arrives first.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from pipeline.core.calico_iface import cali_iface_name
from pipeline.tooling.synthetic import Corpus, generate
from tests.conftest import ROOT
from tests.standins.k8s_standin import ThreadedStandIn, make_node, make_pod, write_kubeconfig
from tests.system.test_e2e import FANOUT_KEYS
from tests.system.test_k8s_watch import WatcherProcess

pytestmark = pytest.mark.slow
S = 10**9


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return generate(seed=13, namespaces=30, records=20_000)


def fanout(stack) -> dict:
    return {r["namespace"]: {k: r[k] for k in FANOUT_KEYS} for r in stack.json("report", "fanout")}


def write_inputs(corpus: Corpus, tmp_path: Path) -> tuple[Path, Path]:
    inv, journal = tmp_path / "inventory.json", tmp_path / "journal.jsonl"
    inv.write_bytes(orjson.dumps(corpus.inventory))
    journal.write_text("\n".join(corpus.journal) + "\n")
    return inv, journal


def assert_exact(stack, corpus: Corpus) -> dict:
    exp = corpus.expected
    summary = stack.wait_for_stored(exp.records, exp.rejected)
    stack.wait_for(lambda: stack.json("report", "summary")["unattributed"] == exp.unowned_sources,
                   what=f"{exp.unowned_sources} unattributed (repairs done)")
    summary = stack.json("report", "summary")
    assert (summary["records"], summary["rejected"]) == (exp.records, exp.rejected)
    # No FINAL: a repaired row replaced its original, it was not added beside it.
    assert stack.json("sql", "SELECT count() AS n, uniqExact(record_id) AS u FROM flows") == [
        {"n": exp.records, "u": exp.records}]
    assert fanout(stack) == exp.fanout
    return summary


def test_inventory_then_ship_with_no_pause(stack_factory, corpus, tmp_path):
    stack = stack_factory().start()
    inv, journal = write_inputs(corpus, tmp_path)
    stack.run("inventory", "load", str(inv))
    stack.run("ship", "file", "--format", "journal-json", str(journal))
    summary = assert_exact(stack, corpus)
    assert summary["repaired"] == 0  # right the first time: nothing needed repair


def test_ownership_minutes_after_its_lines_is_repaired(stack_factory, corpus, tmp_path):
    # Nothing vouches for ownership yet: records the worker cannot attribute wait at most a second.
    stack = stack_factory(FLOWS_HOLD_MAX_S="1", FLOWS_REPAIR_INTERVAL_S="1").start()
    inv, journal = write_inputs(corpus, tmp_path)
    stack.run("ship", "file", "--format", "journal-json", str(journal))
    exp = corpus.expected
    before = stack.wait_for_stored(exp.records, exp.rejected)
    assert before["unattributed"] > exp.unowned_sources  # stored, and wrong for now
    assert stack.status()["hold_released"]["unattributed"] > 0
    stack.run("inventory", "load", str(inv))
    summary = assert_exact(stack, corpus)
    assert summary["repaired"] == before["unattributed"] - exp.unowned_sources
    assert stack.status()["repaired_rows"] == summary["repaired"]
    # `flows reattribute` finds nothing left to do, and says so: it looked at every egress row's
    # destination (and the unattributed sources) in its range.
    out = stack.json("reattribute", "--format", "json")
    egress = stack.json("sql", "SELECT count() AS n FROM flows WHERE direction = 'egress'")[0]["n"]
    assert out["repaired"] == 0 and out["examined"] == egress
    assert fanout(stack) == exp.fanout


def test_worker_killed_while_inventory_and_lines_arrive(stack_factory, broker, corpus, tmp_path):  # noqa: F811
    env = {"FLOWS_KAFKA_BOOTSTRAP": broker.bootstrap, "FLOWS_BATCH_MAX_RECORDS": "2000"}
    worker = stack_factory("w", "worker", **env).start()
    inv, journal = write_inputs(corpus, tmp_path)
    worker.run("inventory", "load", str(inv))
    shipper = subprocess.Popen([sys.executable, "-m", "pipeline", "ship", "file", str(journal)], env=worker.env,
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(2):
        time.sleep(1.0)
        worker.kill()
        worker.start(timeout=90)
    _, stderr = shipper.communicate(timeout=300)
    assert shipper.returncode == 0, stderr.decode()[-2000:]
    assert_exact(worker, corpus)


def journal_line(ts_ns: int, iface: str, src: str, seq: int, dst: str = "8.8.8.8") -> str:
    message = (f"calico-packet: IN={iface} OUT=eth0 MAC=ee:ee:ee:ee:ee:ee:1e:0a:36:33:f5:09:08:00 SRC={src} "
               f"DST={dst} LEN=60 TOS=0x00 PREC=0x00 TTL=63 ID={seq} DF PROTO=TCP SPT={40000 + seq} DPT=443 "
               "WINDOW=64860 RES=0x00 SYN URGP=0 ")
    return json.dumps({"__CURSOR": f"s=attr;i={seq:x};b=boot;m=1;t={ts_ns // 1000:x};x=0",
                       "__REALTIME_TIMESTAMP": str(ts_ns // 1000), "_HOSTNAME": "node-1", "MESSAGE": message})


def ship_lines(stack, tmp_path: Path, name: str, lines: list[str]) -> None:
    path = tmp_path / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    stack.run("ship", "file", "--format", "journal-json", str(path))


def rows(stack) -> list[dict]:
    return stack.json("sql", "SELECT src_namespace AS ns, src_pod AS pod, src_match AS m FROM flows "
                             "ORDER BY ts, record_id")


def test_new_pod_is_known_by_its_interface_before_the_kubelet_reports_its_ip(stack_factory, tmp_path):
    stack = stack_factory().start()
    with ThreadedStandIn(bookmark_interval=1.0) as k8s:
        k8s.call(k8s.server.apply, "nodes", make_node("node-1", "10.0.0.11"))
        created = time.time_ns()
        pending = make_pod("migrate-x", "jobs", None, start_ns=created, phase="Pending")
        k8s.call(k8s.server.apply, "pods", pending)
        watcher = WatcherProcess(stack, write_kubeconfig(tmp_path / "kubeconfig", k8s.server.url, k8s.server.token))
        try:
            watcher.start()
            # The sandbox is networked and talking; status.podIP is not reported yet.
            iface, ip = cali_iface_name("jobs", "migrate-x"), "10.244.7.7"
            ship_lines(stack, tmp_path, "early", [journal_line(time.time_ns(), iface, ip, i) for i in range(3)])
            stack.wait_for_stored(3, 0)
            assert rows(stack) == [{"ns": "jobs", "pod": "migrate-x", "m": "iface"}] * 3
            running = json.loads(json.dumps(pending))
            running["status"].update(phase="Running", podIP=ip, podIPs=[{"ip": ip}])
            k8s.call(k8s.server.apply, "pods", running)
            stack.wait_for(lambda: stack.status()["registry"]["ips"] >= 2, what="the pod's IP claim")
            ship_lines(stack, tmp_path, "late", [journal_line(time.time_ns(), iface, ip, 10)])
            stack.wait_for_stored(4, 0)
        finally:
            watcher.stop()
    assert rows(stack)[-1] == {"ns": "jobs", "pod": "migrate-x", "m": "ip+iface"}
    assert stack.json("report", "summary")["unattributed"] == 0


def test_ip_of_a_vanished_pod_reused_by_an_unseen_pod(stack_factory, tmp_path):
    stack = stack_factory(FLOWS_HOLD_MAX_S="300").start()
    ip = "10.244.8.8"
    with ThreadedStandIn(bookmark_interval=1.0) as k8s:
        k8s.call(k8s.server.apply, "nodes", make_node("node-1", "10.0.0.11"))
        k8s.call(k8s.server.apply, "pods", make_pod("old-0", "a", ip, start_ns=time.time_ns() - 3600 * S))
        watcher = WatcherProcess(stack, write_kubeconfig(tmp_path / "kubeconfig", k8s.server.url, k8s.server.token))
        try:
            watcher.start()
            stack.wait_for(lambda: stack.status()["owners_watermark_ns"] > 0, what="a watermark")
            watcher.stop()  # cut off: what happens now is unseen
            k8s.call(k8s.server.delete, "pods", "a", "old-0")
            k8s.call(k8s.server.apply, "pods", make_pod("new-0", "b", ip, start_ns=time.time_ns() - S))
            iface = cali_iface_name("b", "new-0")
            ship_lines(stack, tmp_path, "reused", [journal_line(time.time_ns(), iface, ip, i) for i in range(4)])
            # Not credited to the vanished pod: the lines' interface names another pod. They wait.
            stack.wait_for(lambda: stack.status()["held_records"] == 4, what="4 held records")
            assert stack.json("report", "summary")["records"] == 0
            watcher.start()
            stack.wait_for_stored(4, 0)
        finally:
            watcher.stop()
    assert rows(stack) == [{"ns": "b", "pod": "new-0", "m": "ip+iface"}] * 4
    status = stack.status()
    assert status["hold_released"] == {"attributed": 4, "unattributed": 0} and status["repaired_rows"] == 0
