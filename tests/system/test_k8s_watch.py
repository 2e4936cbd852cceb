"""The k8s watcher against a stand-in apiserver: list/watch protocol, leader election, end to end.

Protocol cases run in-process (the stand-in on the test's loop, claims collected instead of
published); the end-to-end cases run the watcher as a real process against a real `flows up`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from pipeline.basics.metrics import REGISTRY
from pipeline.core.calico_iface import cali_iface_name
from pipeline.core.claims import events_from_object
from pipeline.core.models import OwnerEvent
from pipeline.k8s.apiserver import RESOURCES, KubeClient
from pipeline.k8s.lease import LeaseElector
from pipeline.k8s.resource_watch import ResourceWatcher
from pipeline.k8s.tracker import OwnershipTracker
from pipeline.transport.broker import free_port
from tests.conftest import ROOT
from tests.standins.k8s_standin import (
    ApiServerStandIn,
    ThreadedStandIn,
    make_node,
    make_pod,
    make_service,
    write_kubeconfig,
)

PODS = RESOURCES[0]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def until(predicate: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Harness:
    """One ResourceWatcher on the stand-in; what it would publish, in order."""

    def __init__(self, api: ApiServerStandIn, kube: KubeClient, **kwargs) -> None:
        self.api = api
        self.published: list[OwnerEvent] = []
        self.watcher = ResourceWatcher(kube, kwargs.pop("resource", PODS), OwnershipTracker(), self._emit, **kwargs)
        self.task: asyncio.Task | None = None

    async def _emit(self, items) -> None:
        # IP claims: pods' identity claims (ip "") follow the same list/watch path, tested in test_attribution.
        self.published.extend(item for item in items if not isinstance(item, OwnerEvent) or item.ip)

    async def start(self) -> Harness:
        self.task = asyncio.create_task(self.watcher.run())
        await until(lambda: self.watcher.synced, what="the first list")
        return self

    def latest(self) -> dict[str, OwnerEvent]:
        return {ev.key: ev for ev in self.published}

    def converged(self, plural: str = "pods") -> bool:
        """The latest claim per key is exactly what the stand-in's live objects claim."""
        expected = {ev.key: ev.valid_to_ns for obj in self.api.store[plural].values()
                    for ev in events_from_object(obj, 0) if ev.ip}
        latest = self.latest()
        open_keys = {k for k, ev in latest.items() if ev.valid_to_ns is None}
        return open_keys == {k for k, v in expected.items() if v is None} and all(
            k in latest and latest[k].valid_to_ns == v for k, v in expected.items())

    def watch_requests(self) -> list[dict[str, str]]:
        return [q for _, path, q in self.api.requests if path == self.watcher.path and q.get("watch")]

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def api() -> AsyncIterator[ApiServerStandIn]:
    server = ApiServerStandIn(chunk_pieces=4, bookmark_interval=0.2)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def kube(api: ApiServerStandIn, tmp_path: Path) -> AsyncIterator[KubeClient]:
    client = await KubeClient.connect(str(write_kubeconfig(tmp_path / "kubeconfig", api.url, api.token)))
    yield client
    await client.close()


@pytest.fixture
async def harness(api: ApiServerStandIn, kube: KubeClient) -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**kwargs) -> Harness:
        made.append(Harness(api, kube, **kwargs))
        return made[-1]

    yield make
    for h in made:
        await h.stop()


def pods(api: ApiServerStandIn, n: int, namespace: str = "a") -> list[dict]:
    return [api.apply("pods", make_pod(f"p{i}", namespace, f"10.244.0.{i + 1}")) for i in range(n)]


# -- list and watch ------------------------------------------------------------------------------


async def test_paged_list_then_watch_of_events_split_over_chunks(api, harness):
    pods(api, 7)
    h = await harness(page_size=3).start()
    lists = [q for _, path, q in api.requests if path == "/api/v1/pods" and not q.get("watch")]
    assert [q.get("continue", "") != "" for q in lists] == [False, True, True]
    assert len(h.published) == 7 and h.converged()
    await until(lambda: api.open_watches == 1, what="the watch")
    (watch,) = h.watch_requests()
    assert watch["resourceVersion"] == str(api.rv) and watch["allowWatchBookmarks"] == "true"

    api.delete("pods", "a", "p3")
    uid = api.store["pods"][("a", "p4")]["metadata"]["uid"]
    api.apply("pods", make_pod("p4", "a", "10.244.0.5", uid=uid, phase="Succeeded", finished_ns=time.time_ns()))
    api.apply("pods", make_pod("new", "b", "10.244.0.99"))
    await until(h.converged, what="deletion, finish and creation to arrive in pieces")
    assert len(h.published) == 10 and len(h.watch_requests()) == 1  # one stream carried them all


async def test_bookmarks_move_the_resource_version_without_events(api, harness):
    pods(api, 2)
    h = await harness().start()
    listed_rv = int(h.watcher.rv)
    before = sample("flows_watch_events_total", resource="pods", type="BOOKMARK")
    api.apply("services", make_service("s", "a", "10.96.0.9"))  # another resource moves the global RV
    await until(lambda: int(h.watcher.rv) > listed_rv, what="a bookmark")
    assert sample("flows_watch_events_total", resource="pods", type="BOOKMARK") > before
    api.disconnect_watches()
    await until(lambda: len(h.watch_requests()) == 2, what="the re-watch")
    assert int(h.watch_requests()[-1]["resourceVersion"]) > listed_rv  # resumed from the bookmark
    assert h.published[2:] == []


@pytest.mark.parametrize("gone_as", ["event", "http"])
async def test_410_gone_relists_and_closes_what_vanished_meanwhile(api, harness, gone_as):
    api.gone_as = gone_as
    pods(api, 3)
    h = await harness().start()
    relists = sample("flows_watch_relists_total", resource="pods", reason="expired")

    def outage() -> None:  # all at once on the server's loop: the watcher cannot see the deletion
        api.delete("pods", "a", "p1")
        api.apply("pods", make_pod("late", "a", "10.244.0.50"))
        api.compact()
        api.disconnect_watches()

    started = time.time_ns()
    outage()
    await until(h.converged, what="the re-list")
    assert sample("flows_watch_relists_total", resource="pods", reason="expired") == relists + 1
    closed = [ev for ev in h.published if ev.name == "p1"][-1]
    assert closed.valid_to_ns is not None and closed.valid_to_ns >= started  # closed at the re-list
    assert len(h.published) == 3 + 2


async def test_connection_dropped_mid_event_loses_nothing_and_duplicates_nothing(api, harness):
    pods(api, 1)
    h = await harness().start()
    restarts = sample("flows_watch_restarts_total", resource="pods")
    relists = sample("flows_watch_relists_total", resource="pods", reason="expired")
    api.drop_mid_event["pods"] = 1
    api.apply("pods", make_pod("cut", "a", "10.244.0.77"))
    api.apply("pods", make_pod("after", "a", "10.244.0.78"))
    await until(h.converged, what="the cut event to be re-delivered")
    assert [ev.name for ev in h.published] == ["p0", "cut", "after"]
    assert sample("flows_watch_restarts_total", resource="pods") == restarts + 1
    assert sample("flows_watch_relists_total", resource="pods", reason="expired") == relists  # no re-list needed
    assert h.watch_requests()[1]["resourceVersion"] == h.watch_requests()[0]["resourceVersion"]


async def test_writes_while_listing_arrive_through_the_watch(api, harness):
    pods(api, 6)

    def write_between_pages(plural: str, page: int) -> None:
        if page == 0:
            api.on_list_page = None
            api.delete("pods", "a", "p5")  # on a later page of the snapshot: listed, then deleted
            api.delete("pods", "a", "p0")  # already listed
            api.apply("pods", make_pod("during", "b", "10.244.1.1"))

    api.on_list_page = write_between_pages
    h = await harness(page_size=2).start()
    assert {ev.name for ev in h.published[:6]} == {f"p{i}" for i in range(6)}  # the snapshot, consistent
    await until(h.converged, what="the writes made during the list")
    assert {ev.name for ev in h.latest().values() if ev.valid_to_ns is not None} == {"p0", "p5"}


async def test_expired_continue_token_restarts_the_list(api, harness):
    pods(api, 5)

    def compact_after_first_page(plural: str, page: int) -> None:
        api.on_list_page = None
        api.delete("pods", "a", "p4")
        api.compact()

    api.on_list_page = compact_after_first_page
    h = await harness(page_size=2).start()
    lists = [q for _, path, q in api.requests if path == "/api/v1/pods" and not q.get("watch")]
    assert ["continue" in q for q in lists] == [False, True, False, True]
    assert h.converged() and "p4" not in {ev.name for ev in h.published}


async def test_watch_timeout_rewatches_from_the_last_resource_version(api, harness):
    pods(api, 1)
    h = await harness(watch_timeout_s=1).start()
    initial = sample("flows_watch_relists_total", resource="pods", reason="initial")
    api.apply("pods", make_pod("x", "a", "10.244.0.9"))
    await until(lambda: len(h.watch_requests()) >= 3, timeout=10, what="watches ended by timeoutSeconds")
    rvs = [int(q["resourceVersion"]) for q in h.watch_requests()]
    assert rvs == sorted(rvs) and rvs[-1] >= api.rv - 1 and all(q["timeoutSeconds"] == "1" for q in h.watch_requests())
    assert sample("flows_watch_relists_total", resource="pods", reason="initial") == initial
    assert h.converged()


async def test_namespaced_watch_and_cluster_scoped_nodes(api, harness):
    api.apply("pods", make_pod("mine", "a", "10.244.0.1"))
    api.apply("pods", make_pod("theirs", "b", "10.244.0.2"))
    api.apply("nodes", make_node("node-1", "10.0.0.11"))
    h = await harness(namespace="a").start()
    n = await harness(resource=RESOURCES[2], namespace="a").start()  # nodes ignore the namespace
    assert h.watcher.path == "/api/v1/namespaces/a/pods" and n.watcher.path == "/api/v1/nodes"
    assert [ev.name for ev in h.published] == ["mine"] and [ev.ip for ev in n.published] == ["10.0.0.11"]
    api.delete("pods", "b", "theirs")
    api.delete("pods", "a", "mine")
    await until(lambda: len(h.published) == 2, what="the deletion in a")
    await asyncio.sleep(0.2)
    assert [ev.name for ev in h.published] == ["mine", "mine"]


async def test_a_refused_token_is_retried_with_backoff(api, tmp_path):
    client = await KubeClient.connect(str(write_kubeconfig(tmp_path / "bad", api.url, "wrong-token")))
    before = sample("flows_watch_restarts_total", resource="services")
    w = ResourceWatcher(client, RESOURCES[1], OwnershipTracker(), lambda items: asyncio.sleep(0))
    task = asyncio.create_task(w.run())
    try:
        await until(lambda: sample("flows_watch_restarts_total", resource="services") >= before + 2,
                    what="retries")
        assert not w.synced
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()


# -- leader election -----------------------------------------------------------------------------


async def test_lease_allows_one_leader_and_hands_over(api, kube):
    a = LeaseElector(kube, "flows", "watcher", "a", lease_s=1, renew_s=0.1)
    b = LeaseElector(kube, "flows", "watcher", "b", lease_s=1, renew_s=0.1)
    # Both race for a lease that does not exist yet: exactly one creates it.
    assert sorted(await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())) == [False, True]
    leader, standby = (a, b) if api.leases[("flows", "watcher")]["spec"]["holderIdentity"] == "a" else (b, a)
    stop = asyncio.Event()
    holding = asyncio.create_task(leader.hold())
    waiting = asyncio.create_task(standby.acquire(stop))
    await asyncio.sleep(1.5)  # longer than the lease: renewals keep it
    assert not waiting.done() and not holding.done()

    holding.cancel()  # the leader hangs: no renewals, no release
    await asyncio.gather(holding, return_exceptions=True)
    hung_at = time.monotonic()
    assert await asyncio.wait_for(waiting, 5) is True
    assert time.monotonic() - hung_at >= 0.8  # not before the lease expired on the standby's clock
    spec = api.leases[("flows", "watcher")]["spec"]
    assert spec["holderIdentity"] == standby.identity and spec["leaseTransitions"] == 1

    assert await leader.try_acquire_or_renew() is False  # the old leader sees it lost
    await standby.release()  # a clean stop hands the lease over at once
    assert await leader.try_acquire_or_renew() is True


# -- RBAC ----------------------------------------------------------------------------------------


def _verb(method: str, path: str, query: dict[str, str]) -> tuple[str, str, str, str]:
    """(apiGroup, resource, verb, name) of a request, as the apiserver's authorizer sees it."""
    parts = path.strip("/").split("/")
    group = "" if parts[0] == "api" else parts[1]
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    if rest[0] == "namespaces":
        rest = rest[2:]
    resource, name = rest[0], rest[1] if len(rest) > 1 else ""
    verb = {"POST": "create", "PUT": "update"}.get(method) or ("watch" if query.get("watch") else
                                                               "get" if name else "list")
    return group, resource, verb, name


async def test_rbac_grants_what_the_watcher_does_and_nothing_more(api, harness, kube):
    import yaml

    docs = list(yaml.safe_load_all((ROOT / "deploy" / "base" / "watcher" / "rbac.yaml").read_text()))
    rules = [r for d in docs if d["kind"] in ("ClusterRole", "Role") for r in d["rules"]]

    def allowed(group: str, resource: str, verb: str, name: str) -> bool:
        return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
                   and (not r.get("resourceNames") or name in r["resourceNames"]) for r in rules)

    for resource in RESOURCES:
        await harness(resource=resource).start()
    elector = LeaseElector(kube, "flows", "flows-k8s-watcher", "me", lease_s=1, renew_s=0.1)
    assert await elector.acquire(asyncio.Event())
    assert await elector.try_acquire_or_renew()
    await elector.release()
    seen = {_verb(m, p, q) for m, p, q in api.requests}
    assert all(allowed(*request) for request in seen), seen
    granted = {(g, res, v) for r in rules for g in r["apiGroups"] for res in r["resources"] for v in r["verbs"]}
    assert granted == {(g, res, v) for g, res, v, _ in seen}  # every grant is used


# -- Kafka ---------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_published_claims_and_tombstones_read_back_into_a_new_tracker(tmp_path):
    from pipeline.basics.config import Settings
    from pipeline.k8s.publisher import OwnerPublisher, restore_from_topic
    from pipeline.transport.broker import EmbeddedBroker
    from pipeline.transport.kafka import ensure_topics

    broker = EmbeddedBroker(free_port(), tmp_path / "broker.log")
    await broker.start()
    try:
        settings = Settings(kafka_bootstrap=broker.bootstrap, home=tmp_path)
        await ensure_topics(settings)
        first = OwnershipTracker()
        kept, expired = make_pod("kept", "a", "10.244.0.1"), make_pod("old", "a", "10.244.0.2")
        claims = first.relist("Pod", [kept, expired], time.time_ns())
        claims += first.observe("DELETED", expired, time.time_ns())
        publisher = OwnerPublisher(settings)
        task = asyncio.create_task(publisher.run())
        await publisher.emit(claims + first.expire(time.time_ns() + 1))
        await asyncio.wait_for(publisher.queue.join(), 20)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

        second = OwnershipTracker()
        # Each pod makes two claims (its identity, its IP): four claims, two closes, two tombstones.
        assert await restore_from_topic(settings, second) == 8
        assert second.stats()["open_claims"] == 2
        assert second.relist("Pod", [kept], time.time_ns()) == []
    finally:
        broker.stop()


@pytest.mark.slow
async def test_two_watchers_one_publisher_and_a_clean_handover(api, tmp_path):
    from pipeline.basics.config import Settings
    from pipeline.k8s.publisher import restore_from_topic
    from pipeline.k8s.session import WatchOptions
    from pipeline.k8s.watch import Watcher
    from pipeline.transport.broker import EmbeddedBroker
    from pipeline.transport.kafka import ensure_topics

    pods(api, 3)
    kubeconfig = str(write_kubeconfig(tmp_path / "kubeconfig", api.url, api.token))
    broker = EmbeddedBroker(free_port(), tmp_path / "broker.log")
    await broker.start()
    settings = Settings(kafka_bootstrap=broker.bootstrap, home=tmp_path)
    with pytest.raises(RuntimeError, match="does not exist"):  # never auto-created without compaction
        await restore_from_topic(settings, OwnershipTracker())
    await ensure_topics(settings)
    watchers = [Watcher(settings, WatchOptions(kubeconfig=kubeconfig, identity=name, metrics_port=0, lease_s=2,
                                               renew_s=0.2, lease_namespace="flows")) for name in ("one", "two")]
    stops = [asyncio.Event(), asyncio.Event()]
    published = sample("flows_owner_events_published_total", kind="pod")
    tasks = [asyncio.create_task(w.run(stop)) for w, stop in zip(watchers, stops, strict=True)]
    try:
        await until(lambda: any(w.leader and w.status()["synced"] for w in watchers), 20, "a synced leader")
        first = next(i for i, w in enumerate(watchers) if w.leader)
        other = watchers[1 - first]
        await until(lambda: other.status()["ready"], what="the standby to be ready")
        assert not other.leader
        # Two claims per pod: its identity (interface) and its IP.
        await until(lambda: sample("flows_owner_events_published_total", kind="pod") == published + 6,
                    what="the first list published")

        stops[first].set()  # a clean stop releases the Lease: the standby takes over at once
        await asyncio.wait_for(tasks[first], 15)
        await until(lambda: other.leader and other.status()["synced"], 10, "the handover")
        api.apply("pods", make_pod("new", "b", "10.244.7.7"))
        await until(lambda: sample("flows_owner_events_published_total", kind="pod") == published + 8,
                    what="the new leader to publish the change")
        await asyncio.sleep(0.3)  # the takeover re-published nothing it read back from the topic
        assert sample("flows_owner_events_published_total", kind="pod") == published + 8
    finally:
        for stop in stops:
            stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
        broker.stop()


# -- end to end ----------------------------------------------------------------------------------

IP = "10.244.9.9"


def journal_line(ts_ns: int, namespace: str, pod: str, seq: int) -> str:
    message = (f"calico-packet: IN={cali_iface_name(namespace, pod)} OUT=eth0 "
               f"MAC=ee:ee:ee:ee:ee:ee:1e:0a:36:33:f5:09:08:00 SRC={IP} DST=8.8.8.8 LEN=60 TOS=0x00 PREC=0x00 "
               f"TTL=63 ID={seq} DF PROTO=TCP SPT={40000 + seq} DPT=443 WINDOW=64860 RES=0x00 SYN URGP=0 ")
    return json.dumps({"__CURSOR": f"s=e2e;i={seq:x};b=boot;m=1;t={ts_ns // 1000:x};x=0",
                       "__REALTIME_TIMESTAMP": str(ts_ns // 1000), "_HOSTNAME": "node-1", "MESSAGE": message})


def at(ts_ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts_ns // 10**9)) + f".{ts_ns // 1000 % 10**6:06d}"


class WatcherProcess:
    """`flows watch k8s` as a real process."""

    def __init__(self, stack, kubeconfig: Path) -> None:
        self.port = free_port()
        self.env = {**stack.env, "FLOWS_KAFKA_BOOTSTRAP": f"127.0.0.1:{stack.port}"}
        self.args = ["--kubeconfig", str(kubeconfig), "--metrics-host", "127.0.0.1", "--metrics-port",
                     str(self.port), "--lease-namespace", "flows", "--watch-timeout", "5"]
        self.log = stack.home / "watch.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> WatcherProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", "watch", "k8s", *self.args],
                                         env=self.env, cwd=ROOT,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while self.get("/readyz") != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"watcher not ready:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        return self

    def get(self, path: str) -> int | str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as resp:
                return resp.read().decode() if path == "/metrics" else resp.status
        except OSError:
            return 0

    def metric(self, name: str, kind: str = "pod") -> float:
        text = self.get("/metrics")
        assert isinstance(text, str)
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{") and f'kind="{kind}"' in line)

    def stop(self) -> float:
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return time.monotonic() - started


@pytest.mark.slow
def test_recycled_ip_is_attributed_on_both_sides_and_a_restart_leaves_no_gap(stack_factory, tmp_path):
    stack = stack_factory().start()
    with ThreadedStandIn(bookmark_interval=1.0) as k8s:
        now = time.time_ns()
        k8s.call(k8s.server.apply, "nodes", make_node("node-1", "10.0.0.11"))
        k8s.call(k8s.server.apply, "pods", make_pod("a-0", "a", IP, start_ns=now - 3600 * 10**9))
        k8s.call(k8s.server.apply, "pods", make_pod("c-0", "c", "10.244.9.10", start_ns=now - 3600 * 10**9))
        k8s.call(k8s.server.apply, "services", make_service("web", "a", "10.96.0.50"))
        watcher = WatcherProcess(stack, write_kubeconfig(tmp_path / "kubeconfig", k8s.server.url, k8s.server.token))
        try:
            watcher.start()
            stack.wait_for_claims(6)  # the node, the service, and an identity and an IP claim per pod
            before = time.time_ns() - 30 * 10**9  # pod a-0 held the IP then

            # The IP moves from namespace a to namespace b while everything runs.
            k8s.call(k8s.server.delete, "pods", "a", "a-0")
            time.sleep(1.1)
            b_start = time.time_ns()
            k8s.call(k8s.server.apply, "pods", make_pod("b-0", "b", IP, start_ns=b_start))
            after = b_start // 10**9 * 10**9 + 2 * 10**9  # B's startTime has whole seconds
            stack.wait_for_claims(8)

            # The watcher restarts; meanwhile c-0 goes away and d-0 arrives.
            assert watcher.stop() < 5 and watcher.proc.returncode == 0
            published_first_run = stack.status()["registry"]
            k8s.call(k8s.server.delete, "pods", "c", "c-0")
            k8s.call(k8s.server.apply, "pods", make_pod("d-0", "d", "10.244.9.11"))
            down = time.time_ns()
            journal = tmp_path / "journal.jsonl"
            journal.write_text("\n".join([journal_line(before, "a", "a-0", 1), journal_line(after, "b", "b-0", 2),
                                          journal_line(down, "b", "b-0", 3)]) + "\n")
            stack.run("ship", "file", "--format", "journal-json", str(journal))
            stack.wait_for_stored(3, 0)

            watcher.start()
            stack.wait_for_claims(published_first_run["claims"] + 2)
            # Read back from the topic, the first list publishes only what changed while it was down.
            # c-0 closed and d-0 opened, each an identity and an IP claim.
            stack.wait_for(lambda: watcher.metric("flows_owner_events_published_total") >= 4, what="the changes")
            time.sleep(0.5)
            assert watcher.metric("flows_owner_events_published_total") == 4
        finally:
            watcher.stop()

    rows = stack.json("sql", "SELECT src_namespace AS ns, src_pod AS pod, src_match AS m FROM flows ORDER BY ts")
    assert rows == [{"ns": "a", "pod": "a-0", "m": "ip+iface"}, {"ns": "b", "pod": "b-0", "m": "ip+iface"},
                    {"ns": "b", "pod": "b-0", "m": "ip+iface"}]
    for ts, expected in ((before, "a"), (after, "b")):
        owners = stack.json("sql", f"SELECT namespace, name, source FROM owner_at(ip='{IP}', at='{at(ts)}')")
        assert owners == [{"namespace": expected, "name": f"{expected}-0", "source": "watch"}]
    # c-0 vanished while no watcher ran: closed at the restart's list, so lines of the downtime still resolve.
    gone = stack.json("sql", f"SELECT namespace, valid_to FROM owner_at(ip='10.244.9.10', at='{at(down)}')")
    assert [r["namespace"] for r in gone] == ["c"] and gone[0]["valid_to"] is not None
    assert stack.json("sql", f"SELECT name FROM owner_at(ip='10.244.9.11', at='{at(time.time_ns())}')") == [
        {"name": "d-0"}]
