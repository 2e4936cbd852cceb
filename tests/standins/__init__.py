"""Stand-ins for what the pipeline talks to outside: the Kubernetes API, Loki, a lossy Kafka, an ASN database."""
