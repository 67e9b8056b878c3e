"""The Helm chart, rendered by the real helm (built by scripts/lint-deploy.sh) and read back as manifests.

Without helm these tests skip, unless LABELAUDIT_REQUIRE_HELM=1 (CI sets it after building helm): then a
missing helm fails them.
"""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from labelaudit.serving.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "labelaudit"
PRODUCTION = CHART / "values-production.yaml"
SECRET_SETTINGS = {"LABELAUDIT_API_KEY", "LABELAUDIT_STORE_URL", "LABELAUDIT_KAFKA_SASL_PASSWORD"}


@pytest.fixture(scope="module")
def helm() -> str:
    path = subprocess.run(
        ["bash", str(ROOT / "scripts" / "lint-deploy.sh"), "--helm-path"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if Path(path).is_file():
        return path
    message = f"no helm at {path}: `bash scripts/lint-deploy.sh` builds it"
    if os.environ.get("LABELAUDIT_REQUIRE_HELM") == "1":
        pytest.fail(message)
    pytest.skip(message)


def render(helm: str, *args: str) -> list[dict]:
    result = subprocess.run(
        [helm, "template", "la", str(CHART), "--namespace", "audit", "--kube-version", "1.30.0", *args],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_error(helm: str, *args: str) -> str:
    result = subprocess.run([helm, "template", "la", str(CHART), *args], capture_output=True, text=True)
    assert result.returncode != 0, "the chart rendered, but should have refused"
    return result.stderr


def find(docs: list[dict], kind: str, name: str) -> dict:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def pod_spec(doc: dict) -> dict:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def workloads(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in {"Deployment", "CronJob"}]


def container(docs: list[dict], kind: str, name: str) -> dict:
    return pod_spec(find(docs, kind, name))["containers"][0]


def effective_env(docs: list[dict], c: dict) -> dict[str, str | dict]:
    """The container's environment as the kubelet builds it: ConfigMaps from envFrom, then env (a
    secretKeyRef stays a dict)."""
    env: dict[str, str | dict] = {}
    for source in c.get("envFrom", []):
        env |= find(docs, "ConfigMap", source["configMapRef"]["name"])["data"]
    for entry in c.get("env", []):
        env[entry["name"]] = entry.get("value", entry.get("valueFrom"))
    return env


def values(path: Path = CHART / "values.yaml") -> dict:
    return yaml.safe_load(path.read_text())


SASL = [
    "--set",
    "kafka.securityProtocol=SASL_SSL",
    "--set",
    "kafka.sasl.mechanism=SCRAM-SHA-512",
    "--set",
    "kafka.sasl.username=audit",
]


# -- the consumer and the topic's partitions ----------------------------------------------------------------


@pytest.mark.parametrize("values_file", [None, PRODUCTION], ids=["default", "production"])
def test_consumer_replicas_never_exceed_the_partitions(helm, values_file):
    args = ["--values", str(values_file)] if values_file else []
    docs = render(helm, *args)
    merged = values() | (values(values_file) if values_file else {})
    replicas = find(docs, "Deployment", "la-labelaudit-consumer")["spec"]["replicas"]
    assert replicas == merged["consumer"]["replicas"]
    assert replicas <= merged["kafka"]["topicPartitions"]


def test_more_consumers_than_partitions_is_refused_with_the_reason(helm):
    stderr = render_error(helm, "--set", "consumer.replicas=5", "--set", "kafka.topicPartitions=4")
    assert "consumer.replicas (5) is more than kafka.topicPartitions (4)" in stderr
    assert "sit idle" in stderr
    render(helm, "--set", "consumer.replicas=4", "--set", "kafka.topicPartitions=4")  # equal is fine


# -- security and resources ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [[], ["--values", str(PRODUCTION)], ["--set", "triton.enabled=true"]],
    ids=["default", "production", "triton"],
)
def test_every_container_runs_locked_down_with_resources(helm, args):
    docs = render(helm, *args)
    seen = []
    for doc in workloads(docs):
        spec = pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, c["name"]
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert c["resources"]["requests"] and c["resources"]["limits"], c["name"]
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert "/tmp" in mounts, f"{c['name']}: a read-only root needs a writable /tmp"
            seen.append(c["name"])
    assert {"gateway", "consumer", "report"} <= set(seen)


# -- the gateway -------------------------------------------------------------------------------------------------


def test_gateway_probes_use_healthz_and_readyz_on_its_port(helm):
    docs = render(helm)
    gateway = container(docs, "Deployment", "la-labelaudit-gateway")
    assert gateway["args"] == ["serve", "--host", "0.0.0.0", "--port", "8080"]
    assert gateway["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    service = find(docs, "Service", "la-labelaudit-gateway")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    hpa = find(docs, "HorizontalPodAutoscaler", "la-labelaudit-gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "la-labelaudit-gateway"
    pdb = find(docs, "PodDisruptionBudget", "la-labelaudit-gateway")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_template_labels(docs, "la-labelaudit-gateway")


def pod_template_labels(docs: list[dict], deployment: str):
    return find(docs, "Deployment", deployment)["spec"]["template"]["metadata"]["labels"].items()


def test_consumer_metrics_bind_every_address_on_the_declared_port(helm):
    docs = render(helm)
    consumer = container(docs, "Deployment", "la-labelaudit-consumer")
    env = effective_env(docs, consumer)
    assert env["LABELAUDIT_METRICS_HOST"] == "0.0.0.0"
    port = consumer["ports"][0]["containerPort"]
    assert consumer["args"] == ["consume", "--metrics-port", str(port)]
    assert consumer["livenessProbe"]["httpGet"]["port"] == "metrics"


# -- settings: the ConfigMap and the Secret ----------------------------------------------------------------------


def test_secrets_are_in_the_secret_and_nowhere_else(helm):
    secrets = {
        "api-key": "key-0f9a",
        "store-url": "postgresql://la:pw-77c1@db.example:5432/la",
        "kafka-sasl-password": "sasl-31d2",
    }
    docs = render(
        helm,
        *SASL,
        "--set",
        f"auth.apiKey={secrets['api-key']}",
        "--set",
        f"store.url={secrets['store-url']}",
        "--set",
        f"kafka.sasl.password={secrets['kafka-sasl-password']}",
    )
    secret = find(docs, "Secret", "la-labelaudit-secrets")
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == secrets
    configmap = find(docs, "ConfigMap", "la-labelaudit-settings")
    assert not SECRET_SETTINGS & configmap["data"].keys()
    assert configmap["data"]["LABELAUDIT_KAFKA_SASL_USERNAME"] == "audit"
    for doc in docs:
        if doc["kind"] != "Secret":
            text = yaml.safe_dump(doc)
            assert not [v for v in secrets.values() if v in text], doc["metadata"]["name"]
    # each container gets only the secrets it uses, by reference
    wanted = {
        ("Deployment", "la-labelaudit-gateway"): {"LABELAUDIT_API_KEY", "LABELAUDIT_STORE_URL"},
        ("Deployment", "la-labelaudit-consumer"): {"LABELAUDIT_STORE_URL", "LABELAUDIT_KAFKA_SASL_PASSWORD"},
        ("CronJob", "la-labelaudit-report"): {"LABELAUDIT_STORE_URL"},
    }
    for (kind, name), expected in wanted.items():
        env = effective_env(docs, container(docs, kind, name))
        refs = {k: v["secretKeyRef"] for k, v in env.items() if isinstance(v, dict)}
        assert refs.keys() == expected, name
        assert {r["name"] for r in refs.values()} == {"la-labelaudit-secrets"}


def test_an_existing_secret_replaces_the_charts(helm):
    docs = render(helm, "--set", "existingSecret=mine")
    assert not [d for d in docs if d["kind"] == "Secret"]
    env = effective_env(docs, container(docs, "Deployment", "la-labelaudit-gateway"))
    assert env["LABELAUDIT_API_KEY"]["secretKeyRef"] == {"name": "mine", "key": "api-key", "optional": True}
    stderr = render_error(helm, "--set", "existingSecret=mine", "--set", "auth.apiKey=k")
    assert "existingSecret is set" in stderr


def test_a_secret_setting_is_refused_in_the_configmap(helm):
    stderr = render_error(helm, "--set", "settings.LABELAUDIT_API_KEY=k")
    assert "settings.LABELAUDIT_API_KEY is a secret" in stderr


@pytest.mark.parametrize("args", [[], ["--values", str(PRODUCTION)]], ids=["default", "production"])
def test_every_labelaudit_variable_is_a_real_setting(helm, args):
    """A typo in the chart would be ignored by Settings (extra="ignore"): catch it here."""
    docs = render(helm, *args)
    fields = set(Settings.model_fields)
    for doc in workloads(docs):
        for c in pod_spec(doc)["containers"]:
            for name in effective_env(docs, c):
                if name.startswith("LABELAUDIT_"):
                    assert name.removeprefix("LABELAUDIT_").lower() in fields, f"{c['name']}: {name}"


# -- Triton ----------------------------------------------------------------------------------------------------


def test_without_triton_the_gateway_runs_onnxruntime(helm):
    docs = render(helm)
    assert not [d for d in docs if "triton" in d["metadata"]["name"]]
    env = effective_env(docs, container(docs, "Deployment", "la-labelaudit-gateway"))
    assert env["LABELAUDIT_BACKEND"] == "onnxruntime"
    assert "LABELAUDIT_TRITON_URL" not in env


@pytest.mark.parametrize("protocol,port", [("grpc", 8001), ("http", 8000)])
def test_with_triton_the_gateway_and_consumer_call_its_service(helm, protocol, port):
    docs = render(helm, "--set", "triton.enabled=true", "--set", f"triton.protocol={protocol}")
    service = find(docs, "Service", "la-labelaudit-triton")
    assert port in [p["port"] for p in service["spec"]["ports"] if p["name"] == protocol]
    triton = container(docs, "Deployment", "la-labelaudit-triton")
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert "--model-repository=/models" in triton["args"]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    selector = service["spec"]["selector"].items()
    assert selector <= pod_template_labels(docs, "la-labelaudit-triton")
    for name in ("la-labelaudit-gateway", "la-labelaudit-consumer"):
        env = effective_env(docs, container(docs, "Deployment", name))
        assert env["LABELAUDIT_BACKEND"] == "triton"
        assert env["LABELAUDIT_TRITON_URL"] == f"la-labelaudit-triton:{port}"
        assert env["LABELAUDIT_TRITON_PROTOCOL"] == protocol
        assert env["LABELAUDIT_MODEL_REPO"] == "/models"  # the gateway still reads the model card


# -- the model repository ------------------------------------------------------------------------------------------


def test_the_model_repository_comes_from_a_claim_or_an_init_container(helm):
    docs = render(helm)
    volumes = pod_spec(find(docs, "Deployment", "la-labelaudit-gateway"))["volumes"]
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "labelaudit-models", "readOnly": True}} in volumes

    docs = render(helm, "--values", str(PRODUCTION))
    for name in ("la-labelaudit-gateway", "la-labelaudit-consumer", "la-labelaudit-triton"):
        spec = pod_spec(find(docs, "Deployment", name))
        [init] = spec["initContainers"]
        assert init["command"] == values(PRODUCTION)["modelRepository"]["init"]["command"]
        assert {"name": "models", "mountPath": "/models"} in init["volumeMounts"]
        main = spec["containers"][0]
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in main["volumeMounts"]

    stderr = render_error(helm, "--set", "modelRepository.existingClaim=")
    assert "modelRepository: set existingClaim" in stderr


def test_the_report_runs_nightly_with_the_store(helm):
    docs = render(helm)
    cronjob = find(docs, "CronJob", "la-labelaudit-report")
    assert cronjob["spec"]["schedule"] == values()["report"]["schedule"]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    report = container(docs, "CronJob", "la-labelaudit-report")
    assert report["args"][0] == "report"
    assert "LABELAUDIT_STORE_URL" in effective_env(docs, report)


def test_the_gateway_publishes_relabel_requests_only_when_asked_and_then_reaches_kafka(helm):
    tls = ["--set", "kafka.tls.existingSecret=kafka-ca"]
    off = container(render(helm, *tls), "Deployment", "la-labelaudit-gateway")
    on_docs = render(helm, *tls, "--set", "gateway.publishRelabels=true")
    on = container(on_docs, "Deployment", "la-labelaudit-gateway")

    assert "LABELAUDIT_HTTP_PUBLISH_RELABELS" not in effective_env(render(helm), off)
    assert "kafka-tls" not in {m["name"] for m in off["volumeMounts"]}
    env = effective_env(on_docs, on)
    assert env["LABELAUDIT_HTTP_PUBLISH_RELABELS"] == "true"
    assert "LABELAUDIT_KAFKA_SASL_PASSWORD" in env and "LABELAUDIT_KAFKA_RELABEL_TOPIC" in env
    [mount] = [m for m in on["volumeMounts"] if m["name"] == "kafka-tls"]
    assert mount["mountPath"] == "/etc/labelaudit/kafka-tls" and mount["readOnly"]
    volumes = pod_spec(find(on_docs, "Deployment", "la-labelaudit-gateway"))["volumes"]
    assert {"name": "kafka-tls", "secret": {"secretName": "kafka-ca", "defaultMode": 0o440}} in volumes
