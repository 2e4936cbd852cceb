"""Configuration from the environment (``FLOWS_*``) with safe embedded defaults.

No setting is needed to run on a laptop: with ``FLOWS_KAFKA_BOOTSTRAP`` unset
``flows up`` starts the embedded broker, and ``FLOWS_CLICKHOUSE_URL`` defaults
to chDB under ``FLOWS_HOME``. Secrets come from the environment or from files
named by ``*_FILE`` variables and are held as ``SecretStr`` so they never show
up in a repr, a log line or ``flows status``.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

RAW_TOPIC = "calico.raw.v1"
OWNERS_TOPIC = "k8s.owners.v1"


def _read_secret_file(path: Path | None) -> SecretStr | None:
    if path is None:
        return None
    try:
        return SecretStr(path.read_text().strip())
    except OSError as exc:
        raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None


class HomeSection(BaseModel):
    """Where a process keeps its state."""

    home: Path = Field(default_factory=lambda: Path.home() / ".flows",
                       description="chDB data, run state (stack.json) and shipper checkpoints")


class KafkaSection(BaseModel):
    """Where records and ownership travel, and how to reach it."""

    kafka_bootstrap: str | None = Field(
        default=None, description="Kafka bootstrap servers; unset: `flows up` starts the embedded broker")
    embedded_kafka_port: int = Field(default=19092, ge=1, le=65535,
                                     description="port of the embedded broker (loopback)")
    raw_topic: str = Field(default=RAW_TOPIC, description="topic of raw log records")
    owners_topic: str = Field(default=OWNERS_TOPIC, description="compacted topic of IP ownership events")
    raw_partitions: int = Field(default=3, ge=1, le=1024,
                                description="partitions of the raw topic when this process creates it")
    replication_factor: int = Field(default=1, ge=1, le=7,
                                    description="replication factor of topics this process creates")
    consumer_group: str = Field(default="flows-worker", description="Kafka consumer group of the workers")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="how to reach Kafka")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism (needed with `SASL_*`)")
    kafka_sasl_username: str | None = Field(default=None, description="SASL user name")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="SASL password")
    kafka_sasl_password_file: Path | None = Field(default=None,
                                                  description="file holding the SASL password (instead of the value)")
    kafka_ssl_cafile: Path | None = Field(default=None, description="CA bundle that signs the brokers' certificates")
    kafka_ssl_certfile: Path | None = Field(default=None, description="client certificate for mutual TLS")
    kafka_ssl_keyfile: Path | None = Field(default=None, description="key of the client certificate")


class ClickHouseSection(BaseModel):
    """Where rows are stored, how to reach it, how long rows stay."""

    clickhouse_url: str | None = Field(
        default=None, description="`chdb://PATH` or `http(s)://host:port` (no credentials in the URL); "
        "unset: chDB under FLOWS_HOME/chdb")
    clickhouse_database: str = Field(default="flows", description="database holding the tables and views")
    clickhouse_user: str | None = Field(default=None, description="ClickHouse server user")
    clickhouse_password: SecretStr | None = Field(default=None, description="ClickHouse server password")
    clickhouse_password_file: Path | None = Field(default=None, description="file holding the ClickHouse password")
    clickhouse_ca_cert: Path | None = Field(default=None, description="CA bundle that signs the server's certificate")
    clickhouse_verify: bool = Field(default=True, description="verify the server's TLS certificate")
    ttl_days: int = Field(default=30, ge=1, le=3650,
                          description="days `flows` and `rejects` rows are kept after ingestion")


class ParsingSection(BaseModel):
    """What a Calico line looks like, and how long ownership answers for an IP."""

    log_prefix: str = Field(default="calico-packet", min_length=1, max_length=64,
                            description="Felix's LogPrefix: what starts a Calico packet-log line")
    iface_prefix: str = Field(default="cali", min_length=1, max_length=8,
                              description="Felix's InterfacePrefix of workload interfaces")
    history_days: int = Field(default=35, ge=1, le=400, description="how long ended ownership claims stay resolvable")
    delete_grace_s: int = Field(
        default=30, ge=0, le=3600, description="seconds an ended claim still answers for its IP (late packets)")


class AttributionSection(BaseModel):
    """How long lines wait for ownership that covers them, so attribution does not depend on timing
    (docs/attribution.md)."""

    ownership_allowance_s: float = Field(
        default=30.0, ge=0, le=3600,
        description="How far behind the owners watermark a record's time must be before ownership is taken "
                    "as complete for it: kubelet status lag (kubernetes#39113, #107896: 30 s and more under "
                    "load), watch delivery and node clock skew.")
    hold_max_s: float = Field(
        default=120.0, ge=0, le=3600,
        description="Longest a record that cannot be attributed yet is held waiting for ownership; then it is "
                    "stored unattributed and repaired when ownership arrives. Bounds what a restart replays.")
    hold_max_records: int = Field(default=200_000, ge=0, le=10_000_000,
                                  description="Most records held at once; the oldest are released first.")
    repair_interval_s: float = Field(
        default=10.0, gt=0, le=3600,
        description="How often a running worker re-attributes stored unattributed rows that new ownership covers.")


class BatchingSection(BaseModel):
    """When a worker writes its batch, and how failed inserts are retried."""

    # 50 000: each batch becomes a part of flows; at 20 000 a drain's merges of those parts took
    # a quarter of the 2 cores the worker drained on (docs/performance.md).
    batch_max_records: int = Field(default=50_000, ge=1, le=1_000_000,
                                   description="worker batch flushed at this many records")
    batch_max_s: float = Field(default=1.0, gt=0, le=60, description="…or at this age in seconds")
    batch_max_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024, le=4 * 1024**3,
                                 description="…or when it holds about this many bytes (rejects keep up to 64 KiB "
                                             "of raw input each)")
    insert_retry_max_s: float = Field(default=30.0, gt=0, description="longest wait between retries of a failed insert")
    insert_blocked_ready_s: float = Field(default=60.0, gt=0,
                                          description="readiness goes false once inserts have been failing (and "
                                                      "retried) for this long")


class DrillSection(BaseModel):
    """Fault injection for tests and fire drills (store/faults.py)."""

    fault_insert_failures: int = Field(default=0, ge=0, le=1000,
                                       description="drills only: fail the first N batch uploads")


class ControlSection(BaseModel):
    """The control and metrics endpoint of a running stack: loopback unless set (the k8s manifests
    open it to probes)."""

    control_host: str = Field(default="127.0.0.1", description="address of the control and metrics endpoint")
    control_port: int = Field(default=0, ge=0, le=65535, description="its port; 0: a free one, written to stack.json")


class QuerySection(BaseModel):
    """Queries a running stack answers for `flows sql` and `flows report` (store/readonly.py).

    Read-only, and cut at these limits so a query cannot starve the inserts running in the same process.
    """

    query_max_execution_s: int = Field(default=120, ge=1, le=3600,
                                       description="longest a query sent to a running `flows up` may run")
    query_max_result_rows: int = Field(default=500_000, ge=1, le=100_000_000,
                                       description="most rows such a query may return (more is an error, not a cut)")
    query_max_memory_bytes: int = Field(default=1 << 30, ge=16 << 20, le=1 << 40,
                                        description="most memory such a query may use")


class Settings(HomeSection, KafkaSection, ClickHouseSection, ParsingSection, AttributionSection,
               BatchingSection, DrillSection, ControlSection, QuerySection, BaseSettings):
    """All knobs of the pipeline; every field maps to ``FLOWS_<NAME>``.

    One tree: each base class above is a section (docs/configuration.md shows them in this
    order), and code reads the fields flat (``settings.kafka_bootstrap``), so the environment
    names stay what users and manifests already set.
    """

    model_config = SettingsConfigDict(env_prefix="FLOWS_", extra="ignore")

    @field_validator("kafka_bootstrap", "clickhouse_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _secrets_from_files(self) -> Settings:
        if self.kafka_sasl_password is None:
            self.kafka_sasl_password = _read_secret_file(self.kafka_sasl_password_file)
        if self.clickhouse_password is None:
            self.clickhouse_password = _read_secret_file(self.clickhouse_password_file)
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                "FLOWS_KAFKA_SECURITY_PROTOCOL=SASL_* needs FLOWS_KAFKA_SASL_MECHANISM, "
                "FLOWS_KAFKA_SASL_USERNAME and FLOWS_KAFKA_SASL_PASSWORD (or _PASSWORD_FILE)"
            )
        if self.clickhouse_url and not self.clickhouse_url.startswith(("chdb://", "http://", "https://")):
            raise ValueError("FLOWS_CLICKHOUSE_URL must start with chdb://, http:// or https://")
        return self

    @property
    def embedded_kafka(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def stack_file(self) -> Path:
        """Written by a running ``flows up``/``flows worker``: where to reach it."""
        return self.run_dir / "stack.json"

    @cached_property
    def effective_clickhouse_url(self) -> str:
        return self.clickhouse_url or f"chdb://{(self.home / 'chdb').resolve()}"

    @property
    def clickhouse_url_for_display(self) -> str:
        """The URL without any user:password part, for messages and logs."""
        parts = urlsplit(self.effective_clickhouse_url)
        if parts.username is None and parts.password is None:
            return self.effective_clickhouse_url
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    @property
    def embedded_clickhouse(self) -> bool:
        return self.effective_clickhouse_url.startswith("chdb://")

    @property
    def history_ns(self) -> int:
        return self.history_days * 86_400 * 10**9
