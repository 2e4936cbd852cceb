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

from pydantic import Field, SecretStr, field_validator, model_validator
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


class Settings(BaseSettings):
    """All knobs of the pipeline; every field maps to ``FLOWS_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="FLOWS_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".flows")

    # Kafka
    kafka_bootstrap: str | None = None
    embedded_kafka_port: int = Field(default=19092, ge=1, le=65535)
    raw_topic: str = RAW_TOPIC
    owners_topic: str = OWNERS_TOPIC
    raw_partitions: int = Field(default=3, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1, le=7)
    consumer_group: str = "flows-worker"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_sasl_password_file: Path | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None

    # ClickHouse
    clickhouse_url: str | None = None
    clickhouse_database: str = "flows"
    clickhouse_user: str | None = None
    clickhouse_password: SecretStr | None = None
    clickhouse_password_file: Path | None = None
    clickhouse_ca_cert: Path | None = None
    clickhouse_verify: bool = True
    ttl_days: int = Field(default=30, ge=1, le=3650)

    # Parsing and enrichment
    log_prefix: str = Field(default="calico-packet", min_length=1, max_length=64)
    iface_prefix: str = Field(default="cali", min_length=1, max_length=8)
    history_days: int = Field(default=35, ge=1, le=400)
    delete_grace_s: int = Field(default=30, ge=0, le=3600)

    # Worker batching
    batch_max_records: int = Field(default=20_000, ge=1, le=1_000_000)
    batch_max_s: float = Field(default=1.0, gt=0, le=60)
    # Approximate memory a batch may hold (rejects keep up to 64 KiB of raw input each).
    batch_max_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024, le=4 * 1024**3)
    insert_retry_max_s: float = Field(default=30.0, gt=0)
    # Readiness goes false once inserts have been failing (and retried) for this long.
    insert_blocked_ready_s: float = Field(default=60.0, gt=0)

    # Fault injection for tests and drills: fail the first N batch uploads (exercises backoff; store/faults.py).
    fault_insert_failures: int = Field(default=0, ge=0, le=1000)

    # Control/metrics endpoint of a running stack (loopback only)
    control_host: str = "127.0.0.1"
    control_port: int = Field(default=0, ge=0, le=65535)

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
