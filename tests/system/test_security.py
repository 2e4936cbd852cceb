"""Security by default: secrets stay secret, configuration errors are clear, user input is data."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipeline.basics.config import Settings
from pipeline.transport.kafka import client_options
from tests.conftest import flows, flows_env
from tests.system.test_e2e import load_inventory

SECRETS = {"FLOWS_KAFKA_SASL_PASSWORD": "kafka-hunter2-secret", "FLOWS_CLICKHOUSE_PASSWORD": "ch-s3cret-pw"}


def test_settings_never_show_secrets(tmp_path):
    pw_file = tmp_path / "pw"
    pw_file.write_text("from-a-file\n")
    s = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                 kafka_sasl_username="u", kafka_sasl_password_file=pw_file, clickhouse_password="ch-s3cret-pw")
    assert s.kafka_sasl_password.get_secret_value() == "from-a-file"
    for text in (repr(s), str(s), s.model_dump_json()):
        assert "from-a-file" not in text and "ch-s3cret-pw" not in text
    assert client_options(s)["sasl_plain_password"] == "from-a-file"  # handed to the client only


def test_configuration_errors_are_clear(tmp_path):
    with pytest.raises(ValidationError, match="cannot read secret file"):
        Settings(clickhouse_password_file=tmp_path / "missing")
    with pytest.raises(ValidationError, match="SASL"):
        Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN")
    with pytest.raises(ValidationError, match="must start with chdb://, http:// or https://"):
        Settings(clickhouse_url="ftp://ch:21")
    with pytest.raises(ValueError, match="cannot load Kafka TLS files"):
        client_options(Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=tmp_path / "nope.pem"))
    bad_ca = tmp_path / "bad.pem"
    bad_ca.write_text("not a certificate")
    with pytest.raises(ValueError, match="cannot load Kafka TLS files"):
        client_options(Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=bad_ca))
    assert "ssl_context" in client_options(Settings(kafka_security_protocol="SSL"))  # system CAs by default


def test_clickhouse_https_errors_do_not_leak_the_password(tmp_path):
    env = flows_env(tmp_path, 1, FLOWS_CLICKHOUSE_URL="https://127.0.0.1:1", FLOWS_CLICKHOUSE_USER="reader",
                    **SECRETS)
    proc = flows(env, "report", "summary", check=False, timeout=120)
    out = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 2 and "cannot open ClickHouse" in out or "127.0.0.1" in out
    assert "ch-s3cret-pw" not in out and "kafka-hunter2-secret" not in out
    proc = flows(flows_env(tmp_path, 1, FLOWS_CLICKHOUSE_URL="https://reader:ch-s3cret-pw@ch:8443"),
                 "report", "summary", check=False)
    out = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode != 0 and "ch-s3cret-pw" not in out


def test_turning_clickhouse_tls_verification_off_warns(tmp_path):
    """FLOWS_CLICKHOUSE_VERIFY=false is allowed (a lab's self-signed server) but never silent."""
    warning = "FLOWS_CLICKHOUSE_VERIFY=false: the ClickHouse server's TLS certificate is not checked"
    for verify, warned in (("false", True), ("true", False)):
        env = flows_env(tmp_path, 1, FLOWS_CLICKHOUSE_URL="https://127.0.0.1:1", FLOWS_CLICKHOUSE_VERIFY=verify)
        proc = flows(env, "report", "summary", check=False, timeout=120)
        err = proc.stderr.decode()
        assert proc.returncode == 2 and "cannot open ClickHouse" in err, err
        assert (warning in " ".join(err.split())) is warned, err


@pytest.mark.slow
def test_running_stack_logs_and_status_hold_no_secret_and_inputs_are_data(stack_factory, tmp_path):
    from pipeline.tooling.synthetic import generate

    corpus = generate(seed=31, namespaces=6, records=1_000)
    stack = stack_factory(**SECRETS).start()
    load_inventory(stack, corpus, tmp_path)
    journal = tmp_path / "j.jsonl"
    journal.write_text("\n".join(corpus.journal))
    stack.run("ship", "file", str(journal))
    stack.wait_for_stored(corpus.expected.records, corpus.expected.rejected)
    outputs = [stack.run("status").stdout, stack.run("status", "--json").stdout,
               stack.run("report", "summary").stdout]
    hostile = "x' OR 1=1; DROP TABLE flows; --"
    drift = stack.run("report", "drift", "--baseline-until", "2000-01-01", "--namespace", hostile,
                      "--format", "json", check=False)
    outputs += [drift.stdout, drift.stderr]
    assert drift.returncode == 2 and b"no egress observed from it" in drift.stderr  # looked up as data
    rows = stack.json("sql", "SELECT count() AS n FROM flows WHERE src_namespace = 'x'' OR 1=1; --'")
    assert rows == [{"n": 0}]
    policy = stack.run("policy", hostile, check=False)
    outputs += [policy.stdout, policy.stderr]
    assert policy.returncode != 0 and b"unknown namespace" in policy.stderr.lower()
    assert stack.json("report", "summary")["records"] == corpus.expected.records  # flows still there
    stack.stop()
    outputs.append(stack.log.read_bytes())
    for blob in outputs:
        for secret in SECRETS.values():
            assert secret.encode() not in blob
