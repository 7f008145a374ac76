"""charts/wicket rendered offline (helm-python-sdk runs Helm's own engine, no helm binary)
and every manifest checked strictly: built-in kinds against the Kubernetes 1.29 and 1.33
schemas, cert-manager and Prometheus Operator kinds against their CRD models."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonpatch
import pytest
import yaml
from cloudcoil.models.cert_manager import v1 as cert_manager
from cloudcoil.models.prometheus_operator import v1 as prometheus_operator
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from proxy.cli import build_parser
from proxy.credentials.keys import load_private_key
from proxy.k8s.injector import SidecarConfig, review
from tests.conftest import ROOT
from tests.k8s_support import validate_strictly

CHART = ROOT / "charts" / "wicket"
NAMESPACE = "wicket-system"
CRD_MODELS: dict[tuple[str, str], Any] = {
    ("cert-manager.io/v1", "Issuer"): cert_manager.Issuer,
    ("cert-manager.io/v1", "Certificate"): cert_manager.Certificate,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): prometheus_operator.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PodMonitor"): prometheus_operator.PodMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): prometheus_operator.PrometheusRule,
}
EVERYTHING_ON: dict[str, Any] = {
    "image": {"digest": "sha256:" + "ab" * 32},
    "sidecar": {"mode": "classic", "policyConfigMap": "agent-policy", "appEnvName": "MCP_URL"},
    "targetNamespaces": ["agents", "tools"],
    "policy": {"create": True},
    "redis": {"enabled": True, "url": "rediss://:s3cret@redis.cache.svc:6380/0"},
    "webhook": {"failurePolicy": "Ignore", "certManager": {"enabled": "true"}, "excludedNamespaces": ["kube-system"]},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "grafanaDashboard": {"enabled": True},
    "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
    "podDisruptionBudget": {"enabled": True},
    "networkPolicy": {"enabled": True},
    "guardian": {"enabled": True},
    "injector": {"podAnnotations": {"example.com/owner": "platform"}},
}


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    chart = helm.Chart.load(CHART)
    rendered = chart.render(values or {}, name="wicket", namespace=NAMESPACE, is_install=True)
    return [
        doc
        for path, text in sorted(rendered.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def check_strictly(resource: dict[str, Any]) -> None:
    model = CRD_MODELS.get((resource["apiVersion"], resource["kind"]))
    if model is None:
        validate_strictly(resource)
        return
    # The CRD models ignore unknown fields; anything they drop or coerce was not in the CRD's schema.
    parsed = model.model_validate(resource).model_dump(by_alias=True, exclude_none=True, mode="json")
    assert parsed == resource, f"{resource['kind']} {resource['metadata']['name']} has fields its CRD does not"


def by_kind(resources: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["kind"] == kind]


def one(
    resources: list[dict[str, Any]], kind: str, name: str | None = None, namespace: str = NAMESPACE
) -> dict[str, Any]:
    [found] = [
        r
        for r in by_kind(resources, kind)
        if (name is None or r["metadata"]["name"] == name) and r["metadata"].get("namespace", NAMESPACE) == namespace
    ]
    return found


def inventory(resources: list[dict[str, Any]]) -> list[str]:
    return sorted(f"{r['kind']}/{r['metadata'].get('namespace', '-')}/{r['metadata']['name']}" for r in resources)


def test_default_values_render_valid_manifests() -> None:
    resources = render()
    for resource in resources:
        check_strictly(resource)
    assert inventory(resources) == [
        "ConfigMap/wicket-system/wicket-injector",
        "Deployment/wicket-system/wicket-injector",
        "MutatingWebhookConfiguration/-/wicket-injector",
        "Secret/wicket-system/wicket-injector-tls",
        "Service/wicket-system/wicket-injector",
        "ServiceAccount/wicket-system/wicket-injector",
    ]

    hook = one(resources, "MutatingWebhookConfiguration")["webhooks"][0]
    assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert "'wicket.dev/inject' in object.metadata.annotations" in hook["matchConditions"][0]["expression"]
    [names, _] = hook["namespaceSelector"]["matchExpressions"]
    assert names == {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", NAMESPACE]}
    assert hook["objectSelector"] == {"matchExpressions": [{"key": "wicket.dev/system", "operator": "DoesNotExist"}]}
    assert hook["clientConfig"]["service"] == {
        "name": "wicket-injector",
        "namespace": NAMESPACE,
        "path": "/mutate",
        "port": 443,
    }

    # The generated certificate is signed by the CA in caBundle and names the Service.
    tls = one(resources, "Secret", "wicket-injector-tls")
    ca = x509.load_pem_x509_certificate(base64.b64decode(hook["clientConfig"]["caBundle"]))
    cert = x509.load_pem_x509_certificate(base64.b64decode(tls["data"]["tls.crt"]))
    assert tls["data"]["ca.crt"] == hook["clientConfig"]["caBundle"]
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert f"wicket-injector.{NAMESPACE}.svc" in sans

    # The injector's pod: `wicket inject-webhook` as the CLI parses it, with the files the chart mounts,
    # labelled so the webhook never mutates it.
    deployment = one(resources, "Deployment", "wicket-injector")
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"]["wicket.dev/system"] == "true"
    [container] = pod["spec"]["containers"]
    args = build_parser().parse_args(container["args"])
    assert args.command == "inject-webhook" and args.listen == "0.0.0.0:8443"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[str(Path(args.tls_cert).parent)] == "tls" and mounts[str(Path(args.config).parent)] == "config"
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["image"] == "ghcr.io/wicket-dev/wicket:0.1.0"

    # The sidecar defaults are what the injector accepts.
    sidecar = yaml.safe_load(one(resources, "ConfigMap", "wicket-injector")["data"]["sidecar.yaml"])
    config = SidecarConfig.from_mapping(sidecar)
    assert config.native and config.image == "ghcr.io/wicket-dev/wicket:0.1.0"
    assert config.stdio_image == "ghcr.io/wicket-dev/wicket:0.1.0-stdio"
    assert config.excluded_namespaces == ("kube-system", NAMESPACE)
    assert (config.secret_name, config.policy_configmap, config.store) == ("wicket-keys", "", "memory")
    assert config.health_port == 9091 and config.app_env_name == "WICKET_URL"


def test_every_optional_feature_renders_valid_manifests() -> None:
    resources = render(EVERYTHING_ON)
    for resource in resources:
        check_strictly(resource)
    assert inventory(resources) == [
        "Certificate/wicket-system/wicket-injector",
        "Certificate/wicket-system/wicket-injector-ca",
        "ConfigMap/agents/agent-policy",
        "ConfigMap/tools/agent-policy",
        "ConfigMap/wicket-system/agent-policy",
        "ConfigMap/wicket-system/wicket-dashboard",
        "ConfigMap/wicket-system/wicket-injector",
        "Deployment/wicket-system/wicket-guardian",
        "Deployment/wicket-system/wicket-injector",
        "Issuer/wicket-system/wicket-injector-ca",
        "Issuer/wicket-system/wicket-injector-selfsigned",
        "MutatingWebhookConfiguration/-/wicket-injector",
        "NetworkPolicy/wicket-system/wicket-injector",
        "PodDisruptionBudget/wicket-system/wicket-injector",
        "PodMonitor/wicket-system/wicket-sidecars",
        "PrometheusRule/wicket-system/wicket",
        "Secret/agents/wicket-keys",
        "Secret/tools/wicket-keys",
        "Secret/wicket-system/wicket-guardian",
        "Service/wicket-system/wicket-guardian",
        "Service/wicket-system/wicket-injector",
        "ServiceAccount/wicket-system/wicket-injector",
        "ServiceMonitor/wicket-system/wicket",
    ]
    webhook = one(resources, "MutatingWebhookConfiguration")
    assert webhook["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": f"{NAMESPACE}/wicket-injector"}
    assert "caBundle" not in webhook["webhooks"][0]["clientConfig"], "cert-manager's cainjector fills it"
    assert webhook["webhooks"][0]["failurePolicy"] == "Ignore"
    certificate = one(resources, "Certificate", "wicket-injector")
    assert certificate["spec"]["secretName"] == "wicket-injector-tls"
    assert f"wicket-injector.{NAMESPACE}.svc" in certificate["spec"]["dnsNames"]

    image = "ghcr.io/wicket-dev/wicket@sha256:" + "ab" * 32
    config = SidecarConfig.from_mapping(
        yaml.safe_load(one(resources, "ConfigMap", "wicket-injector")["data"]["sidecar.yaml"])
    )
    assert (config.image, config.native, config.policy_configmap) == (image, False, "agent-policy")
    assert config.store_secret_key == "REDIS_URL" and config.app_env_name == "MCP_URL"
    assert config.guardian_url == f"http://wicket-guardian.{NAMESPACE}.svc:9400"

    # One set of keys in every target namespace, the guardian's key shared with the guardian.
    agents, tools = (one(resources, "Secret", "wicket-keys", namespace) for namespace in ("agents", "tools"))
    assert agents["data"] == tools["data"]
    assert set(agents["data"]) == {
        "WICKET_SESSION_KEY",
        "WICKET_SIGNING_KEY",
        "WICKET_ADMIN_TOKEN",
        "WICKET_GUARDIAN_KEY",
        "REDIS_URL",
    }
    assert base64.b64decode(agents["data"]["REDIS_URL"]) == b"rediss://:s3cret@redis.cache.svc:6380/0"
    assert isinstance(
        load_private_key(base64.b64decode(agents["data"]["WICKET_SIGNING_KEY"])), ec.EllipticCurvePrivateKey
    )
    assert len(base64.b64decode(agents["data"]["WICKET_SESSION_KEY"])) >= 32
    guardian_secret = one(resources, "Secret", "wicket-guardian")
    assert guardian_secret["data"]["WICKET_GUARDIAN_KEY"] == agents["data"]["WICKET_GUARDIAN_KEY"]

    guardian = one(resources, "Deployment", "wicket-guardian")["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(guardian["args"])
    assert (args.command, args.guardian_command, args.listen) == ("guardian", "serve", "0.0.0.0:9400")
    assert args.policy == ["/etc/wicket/policy/policy.yaml"]
    assert guardian["image"] == image

    policy = one(resources, "ConfigMap", "agent-policy", "agents")
    assert policy["data"]["policy.yaml"].startswith("version: 1\n")

    monitor = one(resources, "PodMonitor")
    assert monitor["spec"]["selector"] == {"matchLabels": {"wicket.dev/injected": "true"}}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "wicket-health"
    assert one(resources, "NetworkPolicy")["spec"]["egress"] == []


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"webhook": {"failurePolicy": "Sometimes"}}, "/webhook/failurePolicy"),
        ({"sidecar": {"mode": "sidecar"}}, "/sidecar/mode"),
        ({"sidecar": {"healthPort": 70000}}, "/sidecar/healthPort"),
        ({"targetNamespaces": ["Agents"]}, "/targetNamespaces/0"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"redis": {"enabled": True, "url": "http://redis:6379"}}, "/redis/url"),
        ({"injector": {"replica": 3}}, "additional properties 'replica' not allowed"),
    ],
)
def test_values_schema_rejects_a_bad_value(values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
        render(values)


def test_helm_lint_strict_finds_no_warning() -> None:
    for values in ({}, EVERYTHING_ON):
        report = helm.lint(CHART, values, strict=True, kube_version="v1.29.0")
        assert report["errors"] == []
        # Severity 1 is informational ("icon is recommended"); 2 is a warning, 3 an error.
        assert [m for m in report["messages"] if m["severity"] > 1] == []


def test_the_charts_sidecar_settings_inject_a_valid_pod() -> None:
    """Chart -> injector -> pod: the ConfigMap the chart renders is what the injector applies."""
    resources = render({"targetNamespaces": ["agents"], "policy": {"create": True}})
    config = SidecarConfig.from_mapping(
        yaml.safe_load(one(resources, "ConfigMap", "wicket-injector")["data"]["sidecar.yaml"])
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "research-agent-0",
            "annotations": {"wicket.dev/inject": "true", "wicket.dev/upstream": "http://mcp.tools.svc:8000/mcp"},
        },
        "spec": {"containers": [{"name": "agent", "image": "registry.example.com/agent:1"}]},
    }
    request = {"uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE"}
    answer = review(
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {**request, "object": pod}},
        config,
    ).response["response"]
    injected = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(answer["patch"])))
    validate_strictly(injected)
    [sidecar] = injected["spec"]["initContainers"]
    secret = one(resources, "Secret", "wicket-keys", "agents")
    policy = one(resources, "ConfigMap", "wicket-policy", "agents")
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in sidecar["env"] if "valueFrom" in e} == {
        secret["metadata"]["name"]
    }
    assert {e["valueFrom"]["secretKeyRef"]["key"] for e in sidecar["env"] if "valueFrom" in e} <= set(secret["data"])
    assert {"name": "wicket-policy", "configMap": {"name": policy["metadata"]["name"]}} in injected["spec"]["volumes"]
    args = sidecar["args"]
    assert Path(args[args.index("--policy") + 1]).name in policy["data"]


def test_the_dashboard_and_alerts_ship_in_the_chart_unchanged() -> None:
    resources = render({"grafanaDashboard": {"enabled": True}, "prometheusRule": {"enabled": True}})
    dashboard = one(resources, "ConfigMap", "wicket-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["wicket.json"]) == json.loads(
        (CHART / "files" / "grafana-dashboard.json").read_text()
    )
    rule = one(resources, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((CHART / "files" / "prometheus-alerts.yaml").read_text())
    for resource in (dashboard, rule):
        check_strictly(resource)
