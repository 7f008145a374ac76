"""Pure sidecar injection: an AdmissionReview in, an AdmissionReview with a JSONPatch out.

No I/O and no aiohttp: ``webhook.py`` serves it. A pod opts in with ``wicket.dev/inject: "true"``
and names its upstream (a URL, or a stdio command as a JSON array) by annotation; the sidecar
settings every pod shares come from the injector's configuration (the chart's ConfigMap).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

PREFIX = "wicket.dev/"
INJECT = PREFIX + "inject"
UPSTREAM = PREFIX + "upstream"
UPSTREAM_COMMAND = PREFIX + "upstream-command"
POLICY_CONFIGMAP = PREFIX + "policy-configmap"
SIDECAR_MODE = PREFIX + "sidecar"
ALLOWED_HOSTS = PREFIX + "allowed-hosts"
STATUS = PREFIX + "status"
INJECTED_LABEL = PREFIX + "injected"
ANNOTATIONS = frozenset({INJECT, UPSTREAM, UPSTREAM_COMMAND, POLICY_CONFIGMAP, SIDECAR_MODE, ALLOWED_HOSTS, STATUS})

CONTAINER_NAME = "wicket"
STATE_VOLUME, TMP_VOLUME, POLICY_VOLUME = "wicket-state", "wicket-tmp", "wicket-policy"
STATE_DIR, POLICY_DIR = "/var/lib/wicket", "/etc/wicket/policy"
SECRET_KEYS = ("WICKET_SESSION_KEY", "WICKET_SIGNING_KEY", "WICKET_ADMIN_TOKEN")
IMAGE_UID = 10001

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HOST_NAME = re.compile(r"^(\*|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)$")
MAX_COMMAND_WORDS = 64


class ConfigError(ValueError):
    """The injector's own configuration is wrong: it refuses to start."""


class AnnotationError(ValueError):
    """A pod's ``wicket.dev/`` annotations are wrong: the pod is refused, never admitted without its sidecar."""


class ReviewError(ValueError):
    """The body is not an admission.k8s.io/v1 AdmissionReview request."""


def _port(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ConfigError(f"{name} must be a port number from 1 to 65535")
    return value


@dataclass(frozen=True)
class SidecarConfig:
    """What every injected sidecar shares; keys as in the chart's ``sidecar.yaml`` (camelCase)."""

    image: str
    stdio_image: str = ""  # the image for stdio upstreams (Node and uv inside); "" = image
    image_pull_policy: str = "IfNotPresent"
    native: bool = True  # init container with restartPolicy: Always (Kubernetes 1.29+); False = classic container
    listen_port: int = 8080
    admin_port: int = 9090
    health_port: int = 9091
    app_env_name: str = "WICKET_URL"
    secret_name: str = "wicket-keys"
    policy_configmap: str = ""  # "" = the bundled default policy
    policy_key: str = "policy.yaml"
    store: str = "memory"
    store_secret_key: str = ""  # a key of the Secret holding the Redis URL (it may hold a password)
    guardian_url: str = ""
    audit_log: str = STATE_DIR + "/audit.jsonl"
    resources: Mapping[str, Any] = field(
        default_factory=lambda: {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
    )
    excluded_namespaces: tuple[str, ...] = ("kube-system",)

    KEYS = {
        "image": "image",
        "stdioImage": "stdio_image",
        "imagePullPolicy": "image_pull_policy",
        "native": "native",
        "listenPort": "listen_port",
        "adminPort": "admin_port",
        "healthPort": "health_port",
        "appEnvName": "app_env_name",
        "secretName": "secret_name",
        "policyConfigMap": "policy_configmap",
        "policyKey": "policy_key",
        "store": "store",
        "storeSecretKey": "store_secret_key",
        "guardianUrl": "guardian_url",
        "auditLog": "audit_log",
        "resources": "resources",
        "excludedNamespaces": "excluded_namespaces",
    }

    @classmethod
    def from_mapping(cls, data: Any) -> SidecarConfig:
        """The chart's ``sidecar.yaml``; an unknown key or a wrong value is an error, not a default."""
        if not isinstance(data, dict):
            raise ConfigError("the sidecar configuration must be a mapping")
        unknown = sorted(set(data) - set(cls.KEYS))
        if unknown:
            raise ConfigError(f"unknown sidecar configuration key(s): {', '.join(unknown)}")
        kwargs = {cls.KEYS[k]: v for k, v in data.items() if v is not None}
        if "excluded_namespaces" in kwargs:
            kwargs["excluded_namespaces"] = tuple(kwargs["excluded_namespaces"])
        config = cls(**kwargs)
        config.validate()
        return config

    def validate(self) -> None:
        for name in ("image", "image_pull_policy", "app_env_name", "secret_name", "policy_key", "store", "audit_log"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{name} must be a non-empty string")
        if self.image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise ConfigError("imagePullPolicy must be Always, IfNotPresent or Never")
        if not isinstance(self.native, bool):
            raise ConfigError("native must be true or false")
        ports = [_port(p, n) for p, n in ((self.listen_port, "listenPort"), (self.admin_port, "adminPort"))]
        ports.append(_port(self.health_port, "healthPort"))
        if len(set(ports)) != 3:
            raise ConfigError("listenPort, adminPort and healthPort must differ")
        if not ENV_NAME.fullmatch(self.app_env_name):
            raise ConfigError("appEnvName must be an environment variable name")
        if not DNS_SUBDOMAIN.fullmatch(self.secret_name):
            raise ConfigError("secretName must be a Kubernetes object name")
        if self.policy_configmap and not DNS_SUBDOMAIN.fullmatch(self.policy_configmap):
            raise ConfigError("policyConfigMap must be a Kubernetes object name")
        if not isinstance(self.resources, Mapping) or set(self.resources) - {"requests", "limits"}:
            raise ConfigError("resources must be a mapping of requests and limits")
        if not all(isinstance(n, str) and DNS_LABEL.fullmatch(n) for n in self.excluded_namespaces):
            raise ConfigError("excludedNamespaces must be a list of namespace names")

    @property
    def url(self) -> str:
        """What the app containers get in ``app_env_name``."""
        return f"http://127.0.0.1:{self.listen_port}/mcp"


@dataclass(frozen=True)
class Request:
    """What a pod asks for through its annotations, validated."""

    upstream: str | None
    command: list[str] | None
    policy_configmap: str
    native: bool
    allowed_hosts: list[str]


def parse_annotations(annotations: Mapping[str, str], config: SidecarConfig) -> Request | None:
    """None when the pod does not opt in; AnnotationError (with every problem) when it asks wrongly."""
    inject = annotations.get(INJECT)
    if inject is None or inject == "false":
        return None
    problems: list[str] = []
    if inject != "true":
        problems.append(f'{INJECT} must be "true" or "false", not {inject!r}')
    unknown = sorted(k for k in annotations if k.startswith(PREFIX) and k not in ANNOTATIONS)
    if unknown:
        problems.append(f"unknown annotation(s) {', '.join(unknown)} (known: {', '.join(sorted(ANNOTATIONS))})")

    upstream, command = annotations.get(UPSTREAM), annotations.get(UPSTREAM_COMMAND)
    argv: list[str] | None = None
    if (upstream is None) == (command is None):
        problems.append(f"set exactly one of {UPSTREAM} (the MCP server's URL) or {UPSTREAM_COMMAND} (a JSON array)")
    elif upstream is not None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
            problems.append(f"{UPSTREAM} must be an http:// or https:// URL with a host and no credentials")
    else:
        try:
            argv = json.loads(command or "")
        except ValueError:
            argv = None
        if (
            not isinstance(argv, list)
            or not 1 <= len(argv) <= MAX_COMMAND_WORDS
            or not all(isinstance(w, str) and w and "\x00" not in w for w in argv)
        ):
            problems.append(
                f"{UPSTREAM_COMMAND} must be a JSON array of 1-{MAX_COMMAND_WORDS} non-empty strings, "
                'e.g. ["npx", "-y", "@modelcontextprotocol/server-everything"]'
            )
            argv = None

    policy = annotations.get(POLICY_CONFIGMAP, config.policy_configmap)
    if POLICY_CONFIGMAP in annotations and not DNS_SUBDOMAIN.fullmatch(policy):
        problems.append(f"{POLICY_CONFIGMAP} must name a ConfigMap in the pod's namespace, not {policy!r}")

    mode = annotations.get(SIDECAR_MODE, "native" if config.native else "classic")
    if mode not in ("native", "classic"):
        problems.append(f'{SIDECAR_MODE} must be "native" or "classic", not {mode!r}')

    hosts = [h.strip() for h in annotations.get(ALLOWED_HOSTS, "").split(",") if h.strip()]
    if ALLOWED_HOSTS in annotations and (not hosts or not all(HOST_NAME.fullmatch(h) for h in hosts)):
        problems.append(f"{ALLOWED_HOSTS} must be a comma-separated list of host names")

    if problems:
        raise AnnotationError("; ".join(problems))
    return Request(
        upstream=upstream if command is None else None,
        command=argv,
        policy_configmap=policy,
        native=mode == "native",
        allowed_hosts=hosts,
    )


def _pointer(token: str) -> str:
    """One RFC 6901 reference token."""
    return token.replace("~", "~0").replace("/", "~1")


def sidecar_container(request: Request, config: SidecarConfig) -> dict[str, Any]:
    """The Wicket container for one pod."""
    listen_host = "0.0.0.0" if request.allowed_hosts else "127.0.0.1"
    args = [
        "run",
        "--listen",
        f"{listen_host}:{config.listen_port}",
        "--admin-listen",
        f"127.0.0.1:{config.admin_port}",
        "--health-listen",
        f"0.0.0.0:{config.health_port}",
        "--audit-log",
        config.audit_log,
    ]
    if not config.store_secret_key:
        args += ["--store", config.store]  # with storeSecretKey, REDIS_URL comes from the Secret
    if request.policy_configmap:
        args += ["--policy", f"{POLICY_DIR}/{config.policy_key}"]
    if config.guardian_url:
        args += ["--guardian-url", config.guardian_url]
    for host in request.allowed_hosts:
        args += ["--allowed-host", host]
    if request.upstream is not None:
        args += ["--upstream", request.upstream]

    env = [_secret_env(key, key, config.secret_name) for key in SECRET_KEYS]
    if config.store_secret_key:
        env.append(_secret_env("REDIS_URL", config.store_secret_key, config.secret_name))
    if config.guardian_url:
        env.append(_secret_env("WICKET_GUARDIAN_KEY", "WICKET_GUARDIAN_KEY", config.secret_name))
    env.append({"name": "HOME", "value": STATE_DIR})  # npm and uv caches of stdio servers

    mounts = [{"name": STATE_VOLUME, "mountPath": STATE_DIR}, {"name": TMP_VOLUME, "mountPath": "/tmp"}]
    if request.policy_configmap:
        mounts.append({"name": POLICY_VOLUME, "mountPath": POLICY_DIR, "readOnly": True})

    def probe(path: str, period: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": "wicket-health"},
            "periodSeconds": period,
            "timeoutSeconds": 2,
            "failureThreshold": failures,
        }

    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": (config.stdio_image or config.image) if request.command else config.image,
        "imagePullPolicy": config.image_pull_policy,
        "args": args + (["--", *request.command] if request.command else []),
        "ports": [
            {"name": "wicket", "containerPort": config.listen_port, "protocol": "TCP"},
            {"name": "wicket-health", "containerPort": config.health_port, "protocol": "TCP"},
        ],
        "env": env,
        "resources": json.loads(json.dumps(dict(config.resources))),
        "volumeMounts": mounts,
        # The app starts once Wicket listens (native sidecars hold the app containers until this passes).
        "startupProbe": probe("/healthz", 1, 60),
        "livenessProbe": probe("/healthz", 10, 3),
        "readinessProbe": probe("/readyz", 5, 3),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": IMAGE_UID,
            "runAsGroup": IMAGE_UID,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if request.native:
        container["restartPolicy"] = "Always"
    return container


def _secret_env(name: str, key: str, secret: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def already_injected(pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    names = {c.get("name") for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])}
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return CONTAINER_NAME in names or annotations.get(STATUS) == "injected"


def pod_patch(pod: Mapping[str, Any], config: SidecarConfig) -> list[dict[str, Any]]:
    """The JSONPatch that injects Wicket; [] for a pod that does not opt in or already has it."""
    metadata = pod.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    request = parse_annotations(annotations, config)
    if request is None or already_injected(pod):
        return []
    spec = pod.get("spec") or {}
    volumes = spec.get("volumes") or []
    taken = {v.get("name") for v in volumes} & {STATE_VOLUME, TMP_VOLUME, POLICY_VOLUME}
    if taken:
        raise AnnotationError(f"the pod already has volume(s) named {', '.join(sorted(taken))}, which Wicket needs")

    ops: list[dict[str, Any]] = []
    container = sidecar_container(request, config)
    if request.native:
        # First, so other init containers can already reach the upstream through Wicket.
        if spec.get("initContainers"):
            ops.append({"op": "add", "path": "/spec/initContainers/0", "value": container})
        else:
            ops.append({"op": "add", "path": "/spec/initContainers", "value": [container]})
    else:
        ops.append({"op": "add", "path": "/spec/containers/-", "value": container})

    new_volumes: list[dict[str, Any]] = [
        {"name": STATE_VOLUME, "emptyDir": {}},
        {"name": TMP_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
    ]
    if request.policy_configmap:
        new_volumes.append({"name": POLICY_VOLUME, "configMap": {"name": request.policy_configmap}})
    if "volumes" in spec and isinstance(spec["volumes"], list):
        ops += [{"op": "add", "path": "/spec/volumes/-", "value": v} for v in new_volumes]
    else:
        ops.append({"op": "add", "path": "/spec/volumes", "value": new_volumes})

    url = {"name": config.app_env_name, "value": config.url}
    for i, app in enumerate(spec.get("containers") or []):
        env = app.get("env")
        if env is None:
            ops.append({"op": "add", "path": f"/spec/containers/{i}/env", "value": [url]})
        elif not any(e.get("name") == config.app_env_name for e in env):  # the pod's own value wins
            ops.append({"op": "add", "path": f"/spec/containers/{i}/env/-", "value": url})

    if "annotations" in metadata:
        ops.append({"op": "add", "path": f"/metadata/annotations/{_pointer(STATUS)}", "value": "injected"})
    else:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {STATUS: "injected"}})
    if metadata.get("labels") is not None:
        ops.append({"op": "add", "path": f"/metadata/labels/{_pointer(INJECTED_LABEL)}", "value": "true"})
    else:
        ops.append({"op": "add", "path": "/metadata/labels", "value": {INJECTED_LABEL: "true"}})
    return ops


@dataclass(frozen=True)
class Outcome:
    """One review's answer and how it went (``injected``, ``unchanged``, ``excluded``, ``refused``)."""

    response: dict[str, Any]
    result: str


def review(body: Any, config: SidecarConfig) -> Outcome:
    """Answer one AdmissionReview request (admission.k8s.io/v1)."""
    if (
        not isinstance(body, dict)
        or body.get("apiVersion") != "admission.k8s.io/v1"
        or body.get("kind") != "AdmissionReview"
        or not isinstance(body.get("request"), dict)
    ):
        raise ReviewError("the body must be an admission.k8s.io/v1 AdmissionReview with a request")
    request = body["request"]
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise ReviewError("the AdmissionReview request has no uid")

    def answer(result: str, **fields: Any) -> Outcome:
        response = {"uid": uid, "allowed": True, **fields}
        return Outcome({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}, result)

    pod = request.get("object")
    kind = (request.get("kind") or {}).get("kind")
    if request.get("operation") != "CREATE" or kind != "Pod" or not isinstance(pod, dict):
        return answer("unchanged")
    if request.get("namespace") in config.excluded_namespaces:
        return answer("excluded")
    try:
        ops = pod_patch(pod, config)
    except AnnotationError as exc:
        message = f"wicket sidecar injection refused: {exc}"
        return answer("refused", allowed=False, status={"status": "Failure", "code": 400, "message": message})
    if not ops:
        return answer("unchanged")
    patch = base64.b64encode(json.dumps(ops, separators=(",", ":")).encode()).decode()
    return answer("injected", patchType="JSONPatch", patch=patch)
