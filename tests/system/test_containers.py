"""The same pipeline against Apache Kafka and a ClickHouse server in containers (Docker only).

Skipped cleanly where no Docker engine runs (as on our build machines); where one does, this is
the proof that `FLOWS_KAFKA_BOOTSTRAP` and `FLOWS_CLICKHOUSE_URL` are all it takes to leave the
embedded defaults.
"""

from __future__ import annotations

import pytest

from pipeline.tooling.synthetic import generate
from tests.system.test_e2e import fanout_of, load_inventory


def docker_engine() -> bool:
    try:
        import docker

        return bool(docker.from_env(timeout=3).ping())
    except Exception:  # no client library, no socket, no daemon: all mean "no engine here"
        return False


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not docker_engine(), reason="no Docker engine: testcontainers suites need one")]


def test_real_kafka_and_clickhouse_server(stack_factory, tmp_path):
    from testcontainers.clickhouse import ClickHouseContainer
    from testcontainers.kafka import KafkaContainer

    corpus = generate(seed=41, namespaces=10, records=5_000)
    with KafkaContainer().with_kraft() as kafka, ClickHouseContainer(
            "clickhouse/clickhouse-server:25.8", username="flows", password="flows-test-pw").with_exposed_ports(
            8123) as ch:
        url = f"http://{ch.get_container_host_ip()}:{ch.get_exposed_port(8123)}"
        worker = stack_factory("w", "worker", FLOWS_KAFKA_BOOTSTRAP=kafka.get_bootstrap_server(),
                               FLOWS_CLICKHOUSE_URL=url, FLOWS_CLICKHOUSE_USER="flows",
                               FLOWS_CLICKHOUSE_PASSWORD="flows-test-pw").start(timeout=180)
        load_inventory(worker, corpus, tmp_path)
        journal = tmp_path / "j.jsonl"
        journal.write_text("\n".join(corpus.journal))
        worker.run("ship", "file", str(journal))
        summary = worker.wait_for_stored(corpus.expected.records, corpus.expected.rejected)
        assert (summary["records"], summary["rejected"]) == (corpus.expected.records, corpus.expected.rejected)
        assert fanout_of(worker) == corpus.expected.fanout
        assert worker.run("migrate").stdout.decode().strip() == "schema is up to date"
