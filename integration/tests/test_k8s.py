"""The Kubernetes manifests in configs/k8s/ validate against the Kubernetes API schemas
(kubernetes-validate, schemas bundled, offline), and what they carry — the daemon file
and the pipeline files of the ConfigMaps — passes `lakeshore validate`; the probes and
the scrape annotations point at endpoints the daemon serves."""
import os
import subprocess
from pathlib import Path

import kubernetes_validate
import yaml
from conftest import BIN

ROOT = Path(__file__).resolve().parents[2]


def documents(folder="k8s"):
    for f in sorted((ROOT / "configs" / folder).glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc:
                yield f.name, doc


def test_manifests_validate_against_the_kubernetes_schemas():
    kinds = set()
    for name, doc in documents():
        kubernetes_validate.validate(doc, "1.37.0", strict=True)
        kinds.add(doc["kind"])
    assert {"Deployment", "ConfigMap", "Secret", "Service", "NetworkPolicy"} <= kinds


def test_what_the_manifests_carry_is_valid_and_consistent(tmp_path):
    docs = dict(((d["kind"], d["metadata"]["name"]), d) for _, d in documents())
    daemon = tmp_path / "lakeshore.toml"
    daemon_text = docs[("ConfigMap", "lakeshore-daemon")]["data"]["lakeshore.toml"]
    # The token file is where the Deployment mounts the token Secret.
    token_mount = "/etc/lakeshore/token"
    assert f'token_file = "{token_mount}/token"' in daemon_text
    (tmp_path / "token").write_text(docs[("Secret", "lakeshore-api-token")]["stringData"]["token"])
    daemon.write_text(daemon_text.replace(f"{token_mount}/token", str(tmp_path / "token")))
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    for file, text in docs[("ConfigMap", "lakeshore-pipelines")]["data"].items():
        (pipelines / file).write_text(text)
    secrets = docs[("Secret", "lakeshore-secrets")]["stringData"]
    r = subprocess.run([BIN, "validate", "--config", str(daemon), str(pipelines)], cwd=tmp_path,
                       capture_output=True, text=True, env={**os.environ, **secrets})
    assert r.returncode == 0, r.stderr
    deployment = docs[("Deployment", "lakeshore")]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert 'http = "0.0.0.0:8080"' in daemon.read_text()
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8080"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert mounts["api-token"] == token_mount
    assert volumes["api-token"]["secret"]["secretName"] == "lakeshore-api-token"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert mounts["tmp"] == "/tmp" and "emptyDir" in volumes["tmp"]
    policy = docs[("NetworkPolicy", "lakeshore")]
    assert policy["spec"]["podSelector"]["matchLabels"] == pod["metadata"]["labels"]
    assert policy["spec"]["ingress"][0]["ports"][0]["port"] == 8080
    # The pod's grace period leaves room for the daemon's own.
    assert pod["spec"]["terminationGracePeriodSeconds"] > 45


def test_the_replica_statefulset_names_each_pod_and_counts_them(tmp_path):
    """configs/k8s-replicas: valid manifests; each pod's name is its replica name
    (LAKESHORE_REPLICA from metadata.name), [replicas] count is the StatefulSet's
    replicas, and its daemon file passes `lakeshore validate`."""
    docs = {}
    for _, doc in documents("k8s-replicas"):
        kubernetes_validate.validate(doc, "1.37.0", strict=True)
        docs[(doc["kind"], doc["metadata"]["name"])] = doc
    sts = docs[("StatefulSet", "lakeshore-replicas")]
    container = sts["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["LAKESHORE_REPLICA"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    text = docs[("ConfigMap", "lakeshore-daemon-replicas")]["data"]["lakeshore.toml"]
    assert f"count = {sts['spec']['replicas']}" in text
    daemon = tmp_path / "lakeshore.toml"
    (tmp_path / "token").write_text("t" * 32)
    daemon.write_text(text.replace("/etc/lakeshore/token/token", str(tmp_path / "token")))
    (tmp_path / "pipelines").mkdir()
    r = subprocess.run([BIN, "validate", "--config", str(daemon), str(tmp_path / "pipelines")], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
