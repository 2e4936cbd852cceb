"""Deployment: every overlay renders, validates offline, and agrees with the code it deploys.

Core objects are checked against the Kubernetes schemas (kubernetes-validate, strict: unknown
fields fail); Strimzi and Calico objects against the schemas in deploy/crd-schemas. Then the
wiring a schema cannot see: topics and partitions against pipeline/basics/config.py, secret files against
the *_FILE settings, probes against the control port, the restricted Pod Security profile, and
fluent-bit's configuration against the record shape pipeline.core.envelopes reads.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import orjson
import pytest
import yaml

from pipeline.basics.config import OWNERS_TOPIC, RAW_TOPIC, Settings
from pipeline.core.envelopes import decode_message
from pipeline.tooling.synthetic import generate
from tests.conftest import ROOT

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")

DEPLOY = ROOT / "deploy"
KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="needs kubectl (with its built-in kustomize)")
K8S_VERSION = "1.32"
OVERLAYS = sorted(p.parent.name for p in (DEPLOY / "overlays").glob("*/kustomization.yaml"))
CRD_SCHEMAS = {
    (doc["properties"]["apiVersion"]["const"], doc["properties"]["kind"]["const"]): doc
    for doc in (json.loads(p.read_text()) for p in sorted((DEPLOY / "crd-schemas").glob("*.json")))
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "GlobalNetworkPolicy"}
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}
GRAFANA = ROOT / "grafana"


def render(path: Path) -> list[dict]:
    """`kubectl kustomize` as `kubectl apply -k` runs it: default load restrictor, files inside each root."""
    proc = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def schema_errors(obj: dict) -> list[str]:
    key = (obj["apiVersion"], obj["kind"])
    where = f"{obj['kind']}/{obj['metadata']['name']}"
    if key in CRD_SCHEMAS:
        validator = jsonschema.Draft202012Validator(CRD_SCHEMAS[key])
        return [f"{where}: {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{where}: {'/'.join(map(str, exc.absolute_path))}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{where}: no schema for {key}"]
    return []


def find(objs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[dict], kind: str, name: str) -> dict:
    found = find(objs, kind, name)
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def config_env(objs: list[dict]) -> dict[str, str]:
    """The FLOWS_* settings of the worker: its ConfigMap (generated name) plus its literal env."""
    worker = one(objs, "Deployment", "flows-worker")["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in worker.get("envFrom", []):
        env.update(one(objs, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({e["name"]: e["value"] for e in worker["env"] if "value" in e})
    return env


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, render(DEPLOY / "overlays" / request.param)


def compose(root: Path, overlay: str, *components: str) -> list[dict]:
    """An overlay with optional components, as a user composes them in a kustomization of their own."""
    rel = Path(os.path.relpath(DEPLOY, root))
    (root / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [str(rel / "overlays" / overlay)],
        "components": [str(rel / "components" / c) for c in components]}))
    return render(root)


@pytest.fixture(scope="module")
def component_overlay(tmp_path_factory) -> list[dict]:
    """The production overlay with the optional Loki shipper."""
    return compose(tmp_path_factory.mktemp("with-components"), "production", "loki-shipper")


@pytest.mark.parametrize("overlay_name", OVERLAYS)
def test_every_overlay_applies_with_all_components(overlay_name, tmp_path):
    """Plain `kubectl apply -k`: every overlay with every optional component, no LoadRestrictionsNone."""
    components = sorted(p.parent.name for p in (DEPLOY / "components").glob("*/kustomization.yaml"))
    assert {"grafana", "loki-shipper"} <= set(components)
    objs = compose(tmp_path, overlay_name, *components)
    assert find(objs, "Deployment", "flows-loki-shipper") and find(objs, "ConfigMap", "flows-grafana-dashboards")
    assert not [e for obj in objs for e in schema_errors(obj)]


def test_there_are_overlays_and_schemas():
    assert {"dev", "production"} <= set(OVERLAYS)
    assert {kind for _, kind in CRD_SCHEMAS} == {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser",
                                                 "GlobalNetworkPolicy"}


def test_every_object_validates_offline(overlay, component_overlay):
    name, objs = overlay
    errors = [e for obj in objs for e in schema_errors(obj)]
    errors += [e for obj in component_overlay for e in schema_errors(obj)]
    assert not errors, "\n".join(errors)


def test_validation_is_not_vacuous(overlay):
    _, objs = overlay
    deployment = copy.deepcopy(one(objs, "Deployment", "flows-worker"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    user = copy.deepcopy(one(objs, "KafkaUser", "flows-worker"))
    user["spec"]["authorization"]["acls"][0]["operation"] = "Read"  # removed in kafka.strimzi.io/v1
    pool = copy.deepcopy(find(objs, "KafkaNodePool")[0])
    pool["spec"]["roles"] = ["zookeeper"]
    policy = copy.deepcopy(one(objs, "GlobalNetworkPolicy", "egress-flows-observe"))
    policy["spec"]["egress"][0]["action"] = "log"
    for broken in (deployment, user, pool, policy):
        assert schema_errors(broken), broken["kind"]


def test_namespaces_and_secrets(overlay):
    name, objs = overlay
    namespaces = {o["metadata"]["name"]: o for o in find(objs, "Namespace")}
    assert set(namespaces) == {"flows", "flows-agent"}
    for obj in objs:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace") in namespaces, f"{obj['kind']}/{obj['metadata']['name']}"
    assert not find(objs, "Secret"), "secrets are referenced, never part of the manifests"
    referenced: set[str] = set()
    for obj in objs:
        text = json.dumps(obj)
        referenced |= set(re.findall(r'"secretName": "([^"]+)"', text))
        referenced |= {ref["name"] for ref in _secret_key_refs(obj)}
        if obj["kind"] in POD_KINDS:
            for container in obj["spec"]["template"]["spec"]["containers"]:
                for env in container.get("env", []):
                    if re.search("PASSWORD|SECRET|TOKEN", env["name"]) and not env["name"].endswith("_FILE"):
                        assert "valueFrom" in env, f"{env['name']} must come from a Secret"
    docs = (ROOT / "docs" / "operations.md").read_text()
    tls = {"flows-clickhouse-tls"} if name == "production" else set()
    assert referenced == {"flows-clickhouse", "flows-worker", "flows-watcher", "flows-cluster-ca-cert",
                          "flows-agent-kafka", "flows-kafka-ca"} | tls
    assert all(name in docs for name in referenced), "docs/operations.md (Deploying) says where each Secret comes from"


def _secret_key_refs(node: object) -> list[dict]:
    if isinstance(node, dict):
        found = [node["secretKeyRef"]] if "secretKeyRef" in node else []
        return found + [r for v in node.values() for r in _secret_key_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _secret_key_refs(v)]
    return []


def _restricted_violations(pod: dict) -> list[str]:
    """The restricted Pod Security Standard, for what our manifests can set."""
    out = []
    psc = pod.get("securityContext", {})
    if any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")):
        out.append("host namespaces")
    if any("hostPath" in v for v in pod.get("volumes", [])):
        out.append("hostPath volume")
    if psc.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
        out.append("seccompProfile")
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext", {})
        if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot")) and sc.get("runAsUser", psc.get("runAsUser", 1))):
            out.append(f"{c['name']}: runAsNonRoot")
        if sc.get("allowPrivilegeEscalation") is not False or sc.get("privileged"):
            out.append(f"{c['name']}: allowPrivilegeEscalation")
        if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
            out.append(f"{c['name']}: capabilities")
    return out


def test_pod_security(overlay, component_overlay):
    _, objs = overlay
    ns_levels = {o["metadata"]["name"]: o["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
                 for o in find(objs, "Namespace")}
    assert ns_levels == {"flows": "restricted", "flows-agent": "privileged"}
    for obj in objs + component_overlay:
        if obj["kind"] not in POD_KINDS:
            continue
        pod = obj["spec"]["template"]["spec"]
        if ns_levels[obj["metadata"]["namespace"]] == "restricted":
            assert not _restricted_violations(pod), (obj["metadata"]["name"], _restricted_violations(pod))
        else:  # the agent needs hostPath and root, nothing more
            assert {v.split(":")[0] for v in _restricted_violations(pod)} == {"hostPath volume", "fluent-bit"}
            sc = pod["containers"][0]["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["readOnlyRootFilesystem"] is True
        for c in pod["containers"]:
            assert c.get("resources", {}).get("limits", {}).get("memory"), (obj["metadata"]["name"], c["name"])


def test_topics_partitions_and_users_agree_with_the_code(overlay):
    name, objs = overlay
    env = config_env(objs)
    fields = Settings.model_fields
    assert all(k.startswith("FLOWS_") and k[6:].lower() in fields for k in env), env
    settings = Settings(**{k[6:].lower(): v for k, v in env.items() if not k.endswith("_FILE")},
                        kafka_sasl_password="unused")  # noqa: S106 - the pods read a mounted file
    assert (settings.raw_topic, settings.owners_topic) == (RAW_TOPIC, OWNERS_TOPIC)

    kafka = find(objs, "Kafka")
    assert len(kafka) == 1
    cluster = kafka[0]["metadata"]["name"]
    for kind in ("KafkaNodePool", "KafkaTopic", "KafkaUser"):
        assert {o["metadata"]["labels"]["strimzi.io/cluster"] for o in find(objs, kind)} == {cluster}
    topics = {t["metadata"].get("name"): t["spec"] for t in find(objs, "KafkaTopic")}
    assert set(topics) == {RAW_TOPIC, OWNERS_TOPIC}
    raw, owners = topics[RAW_TOPIC], topics[OWNERS_TOPIC]
    assert raw["partitions"] == settings.raw_partitions
    assert raw["replicas"] == owners["replicas"] == settings.replication_factor
    assert owners["partitions"] == 1
    assert owners["config"]["cleanup.policy"] == "compact" and owners["config"]["retention.ms"] == -1
    assert raw["config"]["cleanup.policy"] == "delete" and raw["config"]["retention.ms"] > 0
    brokers = sum(p["spec"]["replicas"] for p in find(objs, "KafkaNodePool") if "broker" in p["spec"]["roles"])
    for spec in topics.values():
        assert spec["config"]["min.insync.replicas"] <= spec["replicas"] <= brokers
    worker = one(objs, "Deployment", "flows-worker")
    assert 1 <= worker["spec"]["replicas"] <= raw["partitions"], "more workers than partitions would idle"

    listener = kafka[0]["spec"]["kafka"]["listeners"][0]
    assert settings.kafka_bootstrap == f"{cluster}-kafka-bootstrap:{listener['port']}"
    assert listener["tls"] and settings.kafka_security_protocol == "SASL_SSL"
    assert listener["authentication"]["type"] == "scram-sha-512" == settings.kafka_sasl_mechanism.lower()

    acls = {u["metadata"]["name"]: {(a["resource"]["type"], a["resource"].get("name")): set(a["operations"])
                                    for a in u["spec"]["authorization"]["acls"]} for u in find(objs, "KafkaUser")}
    assert {"Read", "Describe"} <= acls["flows-worker"][("topic", RAW_TOPIC)]
    assert {"Read", "Describe"} <= acls["flows-worker"][("topic", OWNERS_TOPIC)]
    assert "Read" in acls["flows-worker"][("group", settings.consumer_group)]
    assert {"Read", "Write"} <= acls["flows-watcher"][("topic", OWNERS_TOPIC)]
    assert acls["flows-agent"] == {("topic", RAW_TOPIC): {"Describe", "Write"}}


def _mounted_files(pod: dict, container: dict) -> set[str]:
    """Paths of the secret files a container sees."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    files = set()
    for mount in container.get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        if secret:
            files |= {f"{mount['mountPath']}/{item['path']}" for item in secret.get("items", [])}
    return files


def test_workloads_see_their_secret_files_and_probe_the_control_port(overlay, component_overlay):
    _, objs = overlay
    env = config_env(objs)
    for obj in objs + component_overlay:
        if obj["kind"] != "Deployment":
            continue
        pod = obj["spec"]["template"]["spec"]
        for container in pod.get("initContainers", []) + pod["containers"][:1]:
            own = {e["name"]: e.get("value") for e in container.get("env", [])}
            wanted = {v for k, v in own.items() if k.endswith("_FILE")}
            if "FLOWS_KAFKA_SASL_USERNAME" in own:
                wanted |= {v for k, v in env.items() if k.endswith("_CAFILE")}
            if "FLOWS_CLICKHOUSE_USER" in own and "FLOWS_CLICKHOUSE_CA_CERT" in env:
                wanted.add(env["FLOWS_CLICKHOUSE_CA_CERT"])
            assert wanted <= _mounted_files(pod, container), (obj["metadata"]["name"], container["name"])
        assert pod["securityContext"]["runAsUser"] == 10001  # the image's user (Dockerfile)
    worker = one(objs, "Deployment", "flows-worker")["spec"]["template"]["spec"]["containers"][0]
    port = int(env["FLOWS_CONTROL_PORT"])
    assert env["FLOWS_CONTROL_HOST"] == "0.0.0.0"  # noqa: S104 - kubelet probes and Prometheus reach the pod IP
    assert [p["containerPort"] for p in worker["ports"]] == [port]
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert worker["args"] == ["worker"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "USER 10001:10001" in dockerfile and 'ENTRYPOINT ["flows"]' in dockerfile  # what it installs: test_wheel


def clickhouse_users(objs: list[dict]) -> ET.Element:
    data = one(objs, "ConfigMap", _configmap_of(objs, "clickhouse-config"))["data"]
    return ET.fromstring(data["flows-users.xml"])  # noqa: S314 - our own file


def _configmap_of(objs: list[dict], prefix: str) -> str:
    """The generated (hashed) name of a ConfigMap."""
    (name,) = [o["metadata"]["name"] for o in find(objs, "ConfigMap") if o["metadata"]["name"].startswith(prefix + "-")]
    return name


def grants(users: ET.Element, user: str) -> set[str]:
    return {q.text for q in users.findall(f"users/{user}/grants/query")}


def test_clickhouse_users_have_only_what_they_use(overlay):
    """The worker writes without DDL, migrations run as the schema's owner, people and Grafana only read."""
    _, objs = overlay
    users = clickhouse_users(objs)
    assert {u.tag for u in users.find("users")} == {"default", "flows_migrate", "flows", "grafana", "analyst"}
    # edges (sql/009_fast_edges.sql) reads system.parts: granted, for servers that want system tables granted
    assert grants(users, "flows") == {
        "GRANT SELECT ON flows.*", "GRANT SELECT ON system.parts", "GRANT CREATE TEMPORARY TABLE ON *.*",
        "GRANT ALTER DELETE ON flows.flows",
        *(f"GRANT INSERT ON flows.{t}" for t in ("flows", "rejects", "ownership", "edge_seals", "edge_sealed_days",
                                                  "runtime_settings"))}
    assert grants(users, "flows_migrate") == {"GRANT ALL ON flows.*"}
    for reader in ("grafana", "analyst"):
        assert grants(users, reader) == {"GRANT SELECT ON flows.*", "GRANT SELECT ON system.parts"}
        profile = users.find(f"profiles/{users.find(f'users/{reader}/profile').text}")
        assert profile.find("readonly").text in ("1", "2")
        for limit in ("max_execution_time", "max_memory_usage"):  # bounded, and no query setting lifts it
            assert 0 < int(profile.find(limit).text) <= int(profile.find(f"constraints/{limit}/max").text)
    assert [ip.text for ip in users.findall("users/default/networks/ip")] == ["::1", "127.0.0.1"]

    server = one(objs, "StatefulSet", "clickhouse")["spec"]["template"]["spec"]["containers"][0]
    from_secret = {e["name"] for e in server["env"] if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name")
                   == "flows-clickhouse"}
    assert {p.get("from_env") for p in users.iter("password")} == from_secret

    pod = one(objs, "Deployment", "flows-worker")["spec"]["template"]["spec"]
    (migrate,) = pod["initContainers"]
    worker = pod["containers"][0]

    def user_of(container: dict) -> str:
        return next(e["value"] for e in container["env"] if e["name"] == "FLOWS_CLICKHOUSE_USER")

    assert (migrate["args"], user_of(migrate), user_of(worker)) == (["migrate"], "flows_migrate", "flows")
    assert not any("migrate-password" in f for f in _mounted_files(pod, worker)), "the worker never holds DDL rights"


def test_production_clickhouse_traffic_is_tls(overlay):
    name, objs = overlay
    env = config_env(objs)
    url = urlsplit(env["FLOWS_CLICKHOUSE_URL"])
    assert env.get("FLOWS_CLICKHOUSE_VERIFY", "true") == "true"
    if name != "production":
        assert url.scheme == "http"
        return
    assert (url.scheme, url.hostname, url.port) == ("https", "clickhouse", 8443)
    config = one(objs, "ConfigMap", _configmap_of(objs, "clickhouse-config"))["data"]
    tls = ET.fromstring(config["flows-tls.xml"])  # noqa: S314 - our own file
    assert tls.find("https_port").text == "8443"
    assert all(tls.find(port).get("remove") == "1" for port in ("http_port", "tcp_port"))
    server = tls.find("openSSL/server")
    sts = one(objs, "StatefulSet", "clickhouse")["spec"]["template"]["spec"]
    container = sts["containers"][0]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/clickhouse-server/config.d/flows-tls.xml"]["subPath"] == "flows-tls.xml"
    tls_dir = str(Path(server.find("certificateFile").text).parent)
    tls_volume = next(v for v in sts["volumes"] if v["name"] == mounts[tls_dir]["name"])
    assert {i["path"] for i in tls_volume["secret"]["items"]} == {
        Path(server.find(f).text).name for f in ("certificateFile", "privateKeyFile")}
    assert {p["containerPort"] for p in container["ports"]} == {8443, 9363}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS"
    for svc in ("clickhouse", "clickhouse-headless"):
        assert {p["port"] for p in one(objs, "Service", svc)["spec"]["ports"]} <= {8443, 9363}
    policy = one(objs, "NetworkPolicy", "clickhouse-ingress")
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} == {8443, 9363}
    ca = next(v for v in one(objs, "Deployment", "flows-worker")["spec"]["template"]["spec"]["volumes"]
              if v["name"] == "clickhouse-ca")
    assert ca["secret"]["secretName"] == tls_volume["secret"]["secretName"]
    assert env["FLOWS_CLICKHOUSE_CA_CERT"].endswith("/" + ca["secret"]["items"][0]["path"])


def fluent_bit(objs: list[dict]) -> tuple[dict, dict]:
    """The DaemonSet and its parsed configuration."""
    ds = one(objs, "DaemonSet", "fluent-bit")
    pod = ds["spec"]["template"]["spec"]
    container = pod["containers"][0]
    config_arg = next(a for a in container["command"] if a.startswith("--config="))[len("--config="):]
    mount = next(m for m in container["volumeMounts"] if config_arg.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    cm = one(objs, "ConfigMap", volume["configMap"]["name"])
    return ds, yaml.safe_load(cm["data"][Path(config_arg).name])


def test_fluent_bit_daemonset_reads_the_journal_and_writes_the_raw_topic(overlay):
    _, objs = overlay
    ds, config = fluent_bit(objs)
    pod = ds["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert {"operator": "Exists"} in pod["tolerations"]
    host_paths = {v["hostPath"]["path"]: v["name"] for v in pod["volumes"] if "hostPath" in v}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for path in ("/var/log/journal", "/run/log/journal", "/etc/machine-id"):
        assert path in host_paths and mounts[path]["readOnly"] is True, path

    (source,) = config["pipeline"]["inputs"]
    assert source["name"] == "systemd" and source["systemd_filter"] == "_TRANSPORT=kernel"
    assert source["read_from_tail"] is False  # YAML "off"
    assert source.get("strip_underscores", False) is False and source.get("lowercase", False) is False
    state = next(m["mountPath"] for m in container["volumeMounts"]
                 if m["name"] in host_paths.values() and not m.get("readOnly"))
    assert source["db"].startswith(state + "/"), "the cursor DB must survive the pod"
    assert config["service"]["storage.path"].startswith(state + "/")

    (grep,) = config["pipeline"]["filters"]
    key, pattern = grep["regex"].split(" ", 1)
    assert grep["name"] == "grep" and key == "MESSAGE" and pattern == Settings.model_fields["log_prefix"].default
    (out,) = config["pipeline"]["outputs"]
    assert out["name"] == "kafka" and out["topics"] == RAW_TOPIC and out["format"] == "json"
    assert str(out["rdkafka.request.required.acks"]) in ("all", "-1")
    for output in (grep, out):
        assert re.fullmatch(output["match"].replace(".", r"\.").replace("*", ".*"), source["tag"])
    assert out["message_key_field"] == "_HOSTNAME"

    env = {e["name"]: e for e in container["env"]}
    used = set(re.findall(r"\$\{(\w+)\}", yaml.safe_dump(config)))
    assert used <= set(env), used - set(env)
    assert "valueFrom" in env["KAFKA_PASSWORD"]
    ca_dir = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "kafka-ca")
    assert out["rdkafka.ssl.ca.location"].startswith(ca_dir + "/")

    kafka = find(objs, "Kafka")[0]
    listener = kafka["spec"]["kafka"]["listeners"][0]
    kafka_ns = kafka["metadata"]["namespace"]
    assert env["KAFKA_BROKERS"]["value"] == (f"{kafka['metadata']['name']}-kafka-bootstrap.{kafka_ns}.svc:"
                                             f"{listener['port']}")
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ds["metadata"]["namespace"]}}} \
        in listener["networkPolicyPeers"]
    agent_user = one(objs, "KafkaUser", env["KAFKA_USERNAME"]["value"])
    assert agent_user["spec"]["authentication"]["password"]["valueFrom"]["secretKeyRef"] == \
        env["KAFKA_PASSWORD"]["valueFrom"]["secretKeyRef"]


def _fluent_bit_time(ts_us: int, fmt: str) -> object:
    """The timestamp as fluent-bit's kafka output writes it for ``timestamp_format``."""
    if fmt == "double":
        return ts_us / 1e6
    stamp = datetime.fromtimestamp(ts_us // 10**6, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ts_us % 10**6 * 1000:09d}Z" if fmt == "iso8601_ns" else f"{stamp}.{ts_us % 10**6 // 1000:03d}Z"


def test_fluent_bit_record_shape_is_what_the_worker_decodes():
    """The configured timestamp key and format, and the kept journal fields, decode to the exact entry."""
    _, config = fluent_bit(render(DEPLOY / "agent"))
    (out,) = config["pipeline"]["outputs"]
    (grep,) = config["pipeline"]["filters"]
    pattern = re.compile(grep["regex"].split(" ", 1)[1])
    assert out["timestamp_format"] in ("double", "iso8601_ns"), "second or millisecond stamps lose precision"
    entries = [orjson.loads(line) for line in generate(seed=2, namespaces=4, records=200).journal]
    kept = 0
    for entry in entries:
        if entry["_TRANSPORT"] != "kernel" or not pattern.search(entry["MESSAGE"]):
            continue
        kept += 1
        record = {k: v for k, v in entry.items() if not k.startswith("__")}  # the systemd input's fields
        record[out["timestamp_key"]] = _fluent_bit_time(int(entry["__REALTIME_TIMESTAMP"]), out["timestamp_format"])
        (rec,), errors = decode_message(orjson.dumps(record))
        assert not errors
        assert rec.ts_ns == int(entry["__REALTIME_TIMESTAMP"]) * 1000
        assert (rec.host, rec.message, rec.source) == (entry["_HOSTNAME"], entry["MESSAGE"], "fluent-bit")
    assert kept == sum(e["_TRANSPORT"] == "kernel" and "calico-packet" in e["MESSAGE"] for e in entries) > 0


def test_calico_policy_logs_then_allows_egress_of_labelled_namespaces(overlay):
    _, objs = overlay
    (policy,) = find(objs, "GlobalNetworkPolicy")
    spec = policy["spec"]
    assert spec["types"] == ["Egress"] and [r["action"] for r in spec["egress"]] == ["Log", "Allow"]
    assert spec["namespaceSelector"] == "egress-flows/observe == 'true'"
    assert "ingress" not in spec


def test_loki_shipper_component(component_overlay):
    shipper = one(component_overlay, "Deployment", "flows-loki-shipper")
    container = shipper["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:3] == ["ship", "loki", "--follow"] and shipper["spec"]["replicas"] == 1
    assert shipper["spec"]["strategy"]["type"] == "Recreate"
    home = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "home")
    assert home == config_env(component_overlay)["FLOWS_HOME"], "the checkpoint must be on the volume"
    cms = [one(component_overlay, "ConfigMap", ref["configMapRef"]["name"]) for ref in container["envFrom"]]
    assert any("FLOWS_LOKI_URL" in cm["data"] for cm in cms)
    user = one(component_overlay, "KafkaUser", "flows-loki-shipper")
    assert user["spec"]["authorization"]["acls"][0]["resource"]["name"] == RAW_TOPIC


@pytest.mark.skipif(not (GRAFANA / "provisioning" / "datasources" / "clickhouse.yaml").exists(),
                    reason="grafana/provisioning/datasources/clickhouse.yaml not written yet")
def test_grafana_component_lists_every_provisioning_file(tmp_path):
    component = yaml.safe_load((DEPLOY / "components" / "grafana" / "kustomization.yaml").read_text())
    listed = {Path(f).name for gen in component["configMapGenerator"] for f in gen["files"]}
    provisioning = {p.name for p in (GRAFANA / "provisioning" / "alerting").glob("*.yaml")} | {"clickhouse.yaml"}
    assert {p.name for p in (GRAFANA / "dashboards").glob("*.json")} | provisioning == listed
    objs = compose(tmp_path, "dev", "grafana")
    maps = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("flows-grafana")]
    sidecar_labels = ("grafana_datasource", "grafana_dashboard", "grafana_alert")
    assert [[m["metadata"]["labels"].get(k) for k in sidecar_labels].count("1") for m in maps] == [1] * len(maps)
    assert len(maps) == 3
    assert not [e for o in maps for e in schema_errors(o)]
