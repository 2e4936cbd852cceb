"""Tests against real parts: processes, the embedded Kafka-protocol broker, chDB, end to end and under faults."""
