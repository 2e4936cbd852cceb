"""Kafka clients configured from settings: security options, topics, bootstrap discovery."""

from __future__ import annotations

import contextlib
import json
import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from pipeline.basics.config import Settings

# Our batches stay well under Kafka's default 1 MiB message limit.
MAX_BATCH_BYTES = 512 * 1024
MAX_BATCH_RECORDS = 500
# Group timing, set deliberately (docs/design.md, "Rebalances"): when a rebalance starts, the
# coordinator waits up to REBALANCE_TIMEOUT_MS for every member to rejoin before it hands their
# partitions on; a revoked worker must be done with its batch by then (worker/consumer.py
# REVOKE_FLUSH_S). aiokafka's default is the session timeout (10 s), shorter than one slow insert.
REBALANCE_TIMEOUT_MS = 120_000
# A worker that has not fetched for this long (inserts blocked: backpressure) leaves the group,
# so that its partitions go to a worker that may still insert; aiokafka's default, made explicit.
MAX_POLL_INTERVAL_MS = 300_000
# How long a broker may hold a fetch that finds no new data. aiokafka sends one fetch at a time to a
# broker, with only the partitions whose fetched records are all taken: while the worker is still
# taking a busy partition's records, the next request carries just the idle ones, the broker holds it
# (Kafka as long as this; the embedded broker even when data arrives), and the busy partition cannot
# be fetched again until it returns. At aiokafka's 500 ms a draining worker stalled up to 0.45 s
# several times a drain (300 000 batched lines: 44 000-67 000 lines/s at 500 ms, 74 000-79 000 at
# 100 ms; docs/performance.md), and a new owner message waited as long. The cost: up to ten empty
# fetches a second from an idle consumer.
FETCH_MAX_WAIT_MS = 100


class NoBrokerError(RuntimeError):
    """No bootstrap configured and no running ``flows up`` found."""


def bootstrap(settings: Settings) -> str:
    """``FLOWS_KAFKA_BOOTSTRAP``, else the embedded broker a running ``flows up`` advertises."""
    if settings.kafka_bootstrap:
        return settings.kafka_bootstrap
    try:
        state = json.loads(settings.stack_file.read_text())
        return state["kafka_bootstrap"]
    except (OSError, ValueError, KeyError):
        raise NoBrokerError(
            "no Kafka broker: set FLOWS_KAFKA_BOOTSTRAP or start the embedded stack with `flows up`"
        ) from None


def client_options(settings: Settings) -> dict[str, Any]:
    """Security options shared by producer, consumer and admin (never logged)."""
    opts: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        try:
            ctx = ssl.create_default_context(cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile
                                             else None)
            if settings.kafka_ssl_certfile:
                ctx.load_cert_chain(str(settings.kafka_ssl_certfile),
                                    str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load Kafka TLS files (FLOWS_KAFKA_SSL_CAFILE/_CERTFILE/_KEYFILE): "
                             f"{getattr(exc, 'strerror', None) or exc}") from None
        opts["ssl_context"] = ctx
    if settings.kafka_security_protocol.startswith("SASL"):
        assert settings.kafka_sasl_password is not None  # enforced by Settings
        opts["sasl_mechanism"] = settings.kafka_sasl_mechanism
        opts["sasl_plain_username"] = settings.kafka_sasl_username
        opts["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return opts


def make_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """Producer that waits for all in-sync replicas: a shipper only checkpoints what Kafka holds."""
    opts: dict[str, Any] = dict(
        bootstrap_servers=bootstrap(settings),
        acks="all",
        linger_ms=20,
        max_request_size=4 * 1024 * 1024,
        request_timeout_ms=30_000,
        **client_options(settings),
    )
    opts.update(overrides)
    return AIOKafkaProducer(**opts)


def make_consumer(settings: Settings, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    opts: dict[str, Any] = dict(
        bootstrap_servers=bootstrap(settings),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        rebalance_timeout_ms=REBALANCE_TIMEOUT_MS,
        max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
        **client_options(settings),
    )
    opts.update(overrides)
    return AIOKafkaConsumer(*topics, **opts)


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the raw and owners topics if missing; returns the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap(settings), **client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(settings.raw_topic, settings.raw_partitions, settings.replication_factor),
            NewTopic(settings.owners_topic, 1, settings.replication_factor,
                     topic_configs={"cleanup.policy": "compact"}),
        ]
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process created it meanwhile
                await admin.create_topics(missing)
        return [t.name for t in missing]
    finally:
        await admin.close()
