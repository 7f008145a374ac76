"""``wicket inject-webhook`` over TLS, driven with the AdmissionReviews the API server sends.

Each returned patch is applied with ``jsonpatch`` (as the API server applies it) and the
result must be a valid Pod for Kubernetes 1.29 and 1.33 with exactly one Wicket sidecar.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import pytest
import yaml
from aiohttp import web

from proxy.cli import build_parser
from proxy.demo.server import free_port
from proxy.k8s.injector import SidecarConfig
from proxy.k8s.webhook import CertificateFiles, InjectorApp
from tests.k8s_support import validate_strictly, write_serving_certificate

WICKET = str(Path(sys.executable).with_name("wicket"))
IMAGE = "registry.example.com/wicket:0.1.0"
STDIO_IMAGE = "registry.example.com/wicket:0.1.0-stdio"
SIDECAR = {
    "image": IMAGE,
    "stdioImage": STDIO_IMAGE,
    "secretName": "wicket-keys",
    "policyConfigMap": "wicket-policy",
    "store": "memory",
    "appEnvName": "MCP_URL",
    "resources": {"requests": {"cpu": "25m", "memory": "48Mi"}, "limits": {"memory": "192Mi"}},
    "excludedNamespaces": ["kube-system", "wicket-system"],
}


@dataclass
class Injector:
    url: str
    tls: ssl.SSLContext
    process: asyncio.subprocess.Process
    log: Path

    async def review(self, pod: dict[str, Any], namespace: str = "agents", operation: str = "CREATE") -> dict[str, Any]:
        status, body = await self.post(admission_review(pod, namespace, operation))
        assert status == 200, body
        return dict(body["response"])

    async def post(self, body: Any, content_type: str = "application/json") -> tuple[int, Any]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with (
            aiohttp.ClientSession() as http,
            http.post(self.url + "/mutate", data=data, headers={"Content-Type": content_type}, ssl=self.tls) as resp,
        ):
            return resp.status, await resp.json()


@pytest.fixture
async def injector(tmp_path: Path) -> AsyncIterator[Injector]:
    ca, cert, key = write_serving_certificate(tmp_path)
    config = tmp_path / "sidecar.yaml"
    config.write_text(yaml.safe_dump(SIDECAR))
    port = free_port()
    log = tmp_path / "injector.log"
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *(WICKET, "inject-webhook", "--listen", f"127.0.0.1:{port}", "--config", str(config)),
            *("--tls-cert", str(cert), "--tls-key", str(key)),
            stderr=stderr,
        )
    tls = ssl.create_default_context(cafile=str(ca))
    running = Injector(f"https://localhost:{port}", tls, process, log)
    try:
        await wait_healthy(running)
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0


async def wait_healthy(injector: Injector) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            if injector.process.returncode is not None:
                raise AssertionError(injector.log.read_text())
            try:
                async with http.get(injector.url + "/healthz", ssl=injector.tls) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    raise AssertionError("the injector did not start")


def agent_pod(annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod as a Deployment's ReplicaSet creates it (no name yet, generateName, an app with env)."""
    metadata: dict[str, Any] = {
        "generateName": "research-agent-7d9f8c6b5-",
        "labels": {"app": "research-agent", "pod-template-hash": "7d9f8c6b5"},
    }
    if annotations is not None:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "containers": [
                {
                    "name": "agent",
                    "image": "registry.example.com/research-agent:1.4",
                    "env": [{"name": "LOG_LEVEL", "value": "info"}],
                    "ports": [{"containerPort": 8000, "name": "http"}],
                },
                {"name": "log-shipper", "image": "registry.example.com/shipper:2"},
            ],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
            "serviceAccountName": "research-agent",
        },
    }


def admission_review(pod: dict[str, Any], namespace: str, operation: str = "CREATE") -> dict[str, Any]:
    gvk = {"group": "", "version": "v1", "kind": "Pod"}
    gvr = {"group": "", "version": "v1", "resource": "pods"}
    return {
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "namespace": namespace,
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": str(uuid.uuid4()),
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
            },
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }


def apply(pod: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    assert response["allowed"] is True and response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    patched = jsonpatch.apply_patch(pod, ops)
    # The API server names the pod after admission; the schema needs only a valid object.
    validate_strictly({**patched, "metadata": {**patched["metadata"], "name": "research-agent-7d9f8c6b5-x2x4q"}})
    return dict(patched)


def wicket_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod["spec"]
    return [c for c in spec.get("initContainers", []) + spec["containers"] if c["image"] in (IMAGE, STDIO_IMAGE)]


async def test_opted_in_pod_gets_one_native_sidecar(injector: Injector) -> None:
    pod = agent_pod({"wicket.dev/inject": "true", "wicket.dev/upstream": "https://mcp.tools.svc:8443/mcp"})
    response = await injector.review(pod)
    injected = apply(pod, response)

    [sidecar] = wicket_containers(injected)
    assert injected["spec"]["initContainers"] == [sidecar], "a native sidecar is an init container"
    assert sidecar["name"] == "wicket" and sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == IMAGE
    args = sidecar["args"]
    assert args[0] == "run"
    assert args[args.index("--upstream") + 1] == "https://mcp.tools.svc:8443/mcp"
    assert args[args.index("--listen") + 1] == "127.0.0.1:8080"
    assert args[args.index("--admin-listen") + 1] == "127.0.0.1:9090"
    assert args[args.index("--health-listen") + 1] == "0.0.0.0:9091"
    assert args[args.index("--policy") + 1] == "/etc/wicket/policy/policy.yaml"
    assert args[args.index("--audit-log") + 1] == "/var/lib/wicket/audit.jsonl"
    assert args[args.index("--store") + 1] == "memory"
    parsed = build_parser().parse_args(args)  # what `wicket` makes of the sidecar's command line
    assert (parsed.command, parsed.upstream, parsed.health_listen) == (
        "run",
        "https://mcp.tools.svc:8443/mcp",
        "0.0.0.0:9091",
    )
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in sidecar["env"] if "valueFrom" in e}
    assert secrets == {
        k: {"name": "wicket-keys", "key": k} for k in ("WICKET_SESSION_KEY", "WICKET_SIGNING_KEY", "WICKET_ADMIN_TOKEN")
    }
    assert sidecar["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert sidecar["resources"] == SIDECAR["resources"]
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "wicket-health"}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "wicket-health"}
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "wicket-health"}
    assert {p["name"]: p["containerPort"] for p in sidecar["ports"]} == {"wicket": 8080, "wicket-health": 9091}
    mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    assert mounts == {"/var/lib/wicket": "wicket-state", "/tmp": "wicket-tmp", "/etc/wicket/policy": "wicket-policy"}
    volumes = {v["name"]: v for v in injected["spec"]["volumes"]}
    assert volumes["wicket-policy"] == {"name": "wicket-policy", "configMap": {"name": "wicket-policy"}}
    assert "emptyDir" in volumes["wicket-state"] and "scratch" in volumes

    # Every app container reaches Wicket on localhost; its own env is kept.
    agent, shipper = injected["spec"]["containers"]
    assert agent["env"] == [
        {"name": "LOG_LEVEL", "value": "info"},
        {"name": "MCP_URL", "value": "http://127.0.0.1:8080/mcp"},
    ]
    assert shipper["env"] == [{"name": "MCP_URL", "value": "http://127.0.0.1:8080/mcp"}]
    assert injected["metadata"]["annotations"]["wicket.dev/status"] == "injected"
    assert injected["metadata"]["labels"]["wicket.dev/injected"] == "true"

    # Idempotent: the injected pod, reviewed again (reinvocation, a re-created object), is left alone.
    again = await injector.review(injected)
    assert again["allowed"] is True and "patch" not in again


async def test_existing_init_containers_run_after_the_sidecar(injector: Injector) -> None:
    pod = agent_pod({"wicket.dev/inject": "true", "wicket.dev/upstream": "http://mcp:3000/mcp"})
    pod["spec"]["initContainers"] = [{"name": "migrate", "image": "registry.example.com/migrate:1"}]
    injected = apply(pod, await injector.review(pod))
    assert [c["name"] for c in injected["spec"]["initContainers"]] == ["wicket", "migrate"]


async def test_classic_sidecar_and_stdio_command(injector: Injector) -> None:
    command = ["npx", "-y", "@modelcontextprotocol/server-everything"]
    pod = agent_pod(
        {
            "wicket.dev/inject": "true",
            "wicket.dev/upstream-command": json.dumps(command),
            "wicket.dev/sidecar": "classic",
            "wicket.dev/policy-configmap": "strict-policy",
            "wicket.dev/allowed-hosts": "everything.tools.svc,everything.tools.svc.cluster.local",
        }
    )
    pod["metadata"].pop("labels")
    injected = apply(pod, await injector.review(pod))
    [sidecar] = wicket_containers(injected)
    assert "initContainers" not in injected["spec"] and injected["spec"]["containers"][-1] is sidecar
    assert "restartPolicy" not in sidecar and sidecar["image"] == STDIO_IMAGE
    args = sidecar["args"]
    assert args[args.index("--") + 1 :] == command and "--upstream" not in args
    parsed = build_parser().parse_args(args[: args.index("--")])  # main() hands the rest to the stdio server
    assert parsed.allowed_host == ["everything.tools.svc", "everything.tools.svc.cluster.local"]
    assert args[args.index("--listen") + 1] == "0.0.0.0:8080", "named hosts: served on the pod IP"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--allowed-host"] == [
        "everything.tools.svc",
        "everything.tools.svc.cluster.local",
    ]
    assert {"name": "wicket-policy", "configMap": {"name": "strict-policy"}} in injected["spec"]["volumes"]
    assert injected["metadata"]["labels"] == {"wicket.dev/injected": "true"}


async def test_pods_that_do_not_opt_in_are_unchanged(injector: Injector) -> None:
    for pod in (agent_pod(), agent_pod({"team": "research"}), agent_pod({"wicket.dev/inject": "false"})):
        response = await injector.review(copy.deepcopy(pod))
        assert response["allowed"] is True
        assert "patch" not in response and "patchType" not in response


async def test_excluded_namespace_is_unchanged(injector: Injector) -> None:
    pod = agent_pod({"wicket.dev/inject": "true", "wicket.dev/upstream": "http://mcp:3000/mcp"})
    for namespace in ("kube-system", "wicket-system"):
        response = await injector.review(pod, namespace)
        assert response["allowed"] is True and "patch" not in response
    assert "patch" in await injector.review(pod, "agents")


async def test_updates_are_never_mutated(injector: Injector) -> None:
    pod = agent_pod({"wicket.dev/inject": "true", "wicket.dev/upstream": "http://mcp:3000/mcp"})
    response = await injector.review(pod, operation="UPDATE")
    assert response["allowed"] is True and "patch" not in response


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ({"wicket.dev/inject": "yes", "wicket.dev/upstream": "http://mcp:3000/mcp"}, 'must be "true" or "false"'),
        ({"wicket.dev/inject": "true"}, "set exactly one of wicket.dev/upstream"),
        (
            {
                "wicket.dev/inject": "true",
                "wicket.dev/upstream": "http://a/mcp",
                "wicket.dev/upstream-command": '["x"]',
            },
            "set exactly one of wicket.dev/upstream",
        ),
        ({"wicket.dev/inject": "true", "wicket.dev/upstream": "ftp://mcp/"}, "must be an http:// or https:// URL"),
        ({"wicket.dev/inject": "true", "wicket.dev/upstream-command": "npx server"}, "must be a JSON array"),
        (
            {"wicket.dev/inject": "true", "wicket.dev/upstream": "http://mcp/", "wicket.dev/upsteam": "x"},
            "unknown annotation(s) wicket.dev/upsteam",
        ),
        (
            {"wicket.dev/inject": "true", "wicket.dev/upstream": "http://mcp/", "wicket.dev/sidecar": "sometimes"},
            'wicket.dev/sidecar must be "native" or "classic"',
        ),
        (
            {
                "wicket.dev/inject": "true",
                "wicket.dev/upstream": "http://mcp/",
                "wicket.dev/policy-configmap": "Bad_Name",
            },
            "must name a ConfigMap",
        ),
    ],
)
async def test_bad_annotation_is_refused_with_a_clear_message(
    injector: Injector, annotations: dict[str, str], message: str
) -> None:
    response = await injector.review(agent_pod(annotations))
    assert response["allowed"] is False and "patch" not in response
    assert response["status"]["code"] == 400
    assert response["status"]["message"].startswith("wicket sidecar injection refused: ")
    assert message in response["status"]["message"]


async def test_volume_name_clash_is_refused(injector: Injector) -> None:
    pod = agent_pod({"wicket.dev/inject": "true", "wicket.dev/upstream": "http://mcp:3000/mcp"})
    pod["spec"]["volumes"].append({"name": "wicket-state", "emptyDir": {}})
    response = await injector.review(pod)
    assert response["allowed"] is False and "wicket-state" in response["status"]["message"]


async def test_malformed_reviews_and_metrics(injector: Injector) -> None:
    assert (await injector.post(b"{not json"))[0] == 400
    assert (await injector.post({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}))[0] == 400
    assert (await injector.post(admission_review(agent_pod(), "agents"), content_type="text/plain"))[0] == 415
    await injector.review(agent_pod({"wicket.dev/inject": "true", "wicket.dev/upstream": "http://mcp:3000/mcp"}))
    async with aiohttp.ClientSession() as http, http.get(injector.url + "/metrics", ssl=injector.tls) as response:
        text = await response.text()
    assert 'wicket_injector_reviews_total{result="injected"} 1.0' in text
    assert 'wicket_injector_reviews_total{result="invalid"} 3.0' in text


async def test_plain_http_is_not_served(injector: Injector) -> None:
    with pytest.raises(aiohttp.ClientError):
        async with aiohttp.ClientSession() as http:
            await http.get(injector.url.replace("https://", "http://") + "/healthz")


def test_bad_configuration_refuses_to_start(tmp_path: Path) -> None:
    _, cert, key = write_serving_certificate(tmp_path)
    config = tmp_path / "sidecar.yaml"
    config.write_text(yaml.safe_dump({**SIDECAR, "imagePullPolicy": "Sometimes", "sidecarImage": "x"}))
    result = subprocess.run(
        [WICKET, "inject-webhook", "--tls-cert", str(cert), "--tls-key", str(key), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "unknown sidecar configuration key(s): sidecarImage" in result.stderr


async def test_a_rotated_certificate_is_served_to_new_connections(tmp_path: Path) -> None:
    """cert-manager renews the Secret in place; the injector serves the new pair without a restart."""
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    ca1, cert1, key1 = write_serving_certificate(first)
    ca2, cert2, key2 = write_serving_certificate(second)
    live_cert, live_key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(cert1, live_cert)
    shutil.copy(key1, live_key)
    files = CertificateFiles(str(live_cert), str(live_key))
    assert files.reload_if_changed() is False, "nothing changed yet"

    runner = web.AppRunner(InjectorApp(SidecarConfig.from_mapping(SIDECAR)).app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=files.context).start()
    try:

        async def served_by(ca: Path) -> int:
            async with aiohttp.ClientSession() as http:
                tls = ssl.create_default_context(cafile=str(ca))
                async with http.get(f"https://localhost:{port}/healthz", ssl=tls) as response:
                    return response.status

        assert await served_by(ca1) == 200
        shutil.copy(cert2, live_cert)
        shutil.copy(key2, live_key)
        os.utime(live_cert, (1, 1))  # a different mtime even within the file system's clock resolution
        assert files.reload_if_changed() is True
        assert await served_by(ca2) == 200
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await served_by(ca1)

        live_key.write_text("not a key")  # a half-written renewal keeps the previous pair
        os.utime(live_key, (2, 2))
        assert files.reload_if_changed() is False
        assert await served_by(ca2) == 200
    finally:
        await runner.cleanup()
