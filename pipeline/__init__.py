"""Egress observatory: Calico packet logs -> Kafka -> enrichment -> ClickHouse."""

__version__ = "0.1.0"
