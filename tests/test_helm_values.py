"""The Zero to JupyterHub values and the manifests under helm-values/, checked without a cluster.

- every file parses, and every Kubernetes object validates against the Kubernetes OpenAPI
  schema (kubernetes-validate's bundled schemas, strict: unknown fields are errors);
- the values render into a working JupyterHub configuration the way z2jh's hub image builds
  it (its jupyterhub_config.py: hub.services, hub.loadRoles, the singleuser settings,
  ``c[section].update(...)`` for each hub.config section, then every hub.extraConfig snippet
  exec'd in order), and the spawner and the ``suspend`` service, instantiated from it, carry
  the settings, while invalid settings are rejected;
- the agent DaemonSet's arguments parse into a NodeAgent that agrees with the spawner, the
  Secrets and its own volumes;
- RBAC is least privilege.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml
from conftest import require_command
from jupyterhub import scopes as hub_scopes
from traitlets import TraitError
from traitlets.config import Config

REPO = Path(__file__).resolve().parents[1]
HELM = REPO / "helm-values"
VALUES = HELM / "jhub-suspend.yaml"
GPU_VALUES = HELM / "gpu.yaml"
VALUES_FILES = (VALUES, GPU_VALUES)
CHECK_SCRIPT = REPO / "scripts" / "check-cluster.sh"
# The newest Kubernetes release whose schema kubernetes-validate ships at the pinned minimum
# we rely on; the chart (z2jh 4.x) needs >= 1.32.
K8S_VERSION = "1.35"
HUB_NAMESPACE = "jhub"
AGENT_NAMESPACE = "jhub-suspend-system"
# z2jh 4.x's hub pod labels (jupyterhub.matchLabels: the legacy ones).
HUB_POD_LABELS = {"app": "jupyterhub", "component": "hub", "release": "jhub"}
CRD_GROUPS = ("monitoring.coreos.com/", "cert-manager.io/")
# Registry credential Secrets, the only Secrets an RBAC rule could name (by resourceNames).
REGISTRY_SECRETS = {"jhub-suspend-registry-push", "jhub-suspend-registry-pull"}


# ---- loading ---------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(HELM.rglob("*.yaml")) + sorted(HELM.rglob("*.yml"))


def load_docs(path: Path) -> list[Any]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object under helm-values/ (files whose documents have a kind)."""
    out = []
    for path in yaml_files():
        if path in VALUES_FILES:
            continue
        for doc in load_docs(path):
            out.append((path, doc))
    return out


def objects(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        o
        for _, o in manifests()
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(kind: str, name: str) -> dict[str, Any]:
    found = objects(kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def deep_merge(base: Any, overlay: Any) -> Any:
    """Helm's merge of several --values files: maps merge recursively, anything else replaces."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for k, v in overlay.items():
            merged[k] = deep_merge(base[k], v) if k in base else copy.deepcopy(v)
        return merged
    return copy.deepcopy(overlay)


def values(*files: Path) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for f in files or (VALUES,):
        (doc,) = load_docs(f)
        merged = deep_merge(merged, doc)
    return merged


def lookup(tree: dict[str, Any], dotted: str, default: Any = None) -> Any:
    """z2jh's get_config: a dotted key into the values."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


# ---- z2jh's jupyterhub_config.py, the parts that read these values --------------------------


def z2jh_config(vals: dict[str, Any]) -> Config:
    """Build ``c`` as z2jh 4.x's hub image does from the chart's values."""
    vals = copy.deepcopy(vals)
    c = Config()

    def get_config(key: str, default: Any = None) -> Any:
        return copy.deepcopy(lookup(vals, key, default))

    def get_name(name: str) -> str:  # fullnameOverride "" (z2jh's default): names as is
        return name

    c.JupyterHub.spawner_class = "kubespawner.KubeSpawner"
    c.KubeSpawner.namespace = os.environ.get("POD_NAMESPACE", "default")
    for trait, key in (
        ("profile_list", "profileList"),
        ("start_timeout", "startTimeout"),
        ("node_selector", "nodeSelector"),
        ("environment", "extraEnv"),
    ):
        value = get_config("singleuser." + key)
        if value is not None:
            c.KubeSpawner[trait] = value
    if pull_secrets := get_config("singleuser.image.pullSecrets"):
        c.KubeSpawner.image_pull_secrets = pull_secrets
    c.JupyterHub.services = []
    c.JupyterHub.load_roles = []
    for key, service in get_config("hub.services", {}).items():
        service.setdefault("name", key)
        service.pop("apiToken", None)
        service["api_token"] = "secret-from-the-hub-secret"
        c.JupyterHub.services.append(service)
    for key, role in get_config("hub.loadRoles", {}).items():
        role.setdefault("name", key)
        c.JupyterHub.load_roles.append(role)
    c.CryptKeeper.keys = ["0" * 64]
    for section, cfg in get_config("hub.config", {}).items():
        if section == "JupyterHub":
            for popped in ("proxy_auth_token", "cookie_secret", "services"):
                cfg.pop(popped, None)
        if not section[:1].isupper():
            raise SystemExit(f"FATAL: Invalid hub.config section name: {section}")
        c[section].update(cfg)
    namespace = {
        "c": c,
        "get_config": get_config,
        "get_name": get_name,
        "os": os,
        "sys": sys,
        "__name__": "__main__",
    }
    for _key, code in sorted(get_config("hub.extraConfig", {}).items()):
        exec(compile(code, f"hub.extraConfig.{_key}", "exec"), namespace)
    return c


@pytest.fixture
def hub_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The hub container's environment as z2jh sets it, with hub.extraEnv's Secret values.
    KubeSpawner loads a client configuration when it is created (in-cluster in the hub pod);
    here it is skipped: no request is ever made."""
    import kubespawner.spawner

    monkeypatch.setattr(kubespawner.spawner, "load_config", lambda **kwargs: None)
    env = {
        "POD_NAMESPACE": HUB_NAMESPACE,
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "JHUB_SUSPEND_AGENT_TOKEN": "agent-token-from-the-secret",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture
def custom_scopes_defined() -> Iterator[None]:
    """JupyterHub keeps custom scopes in module globals: restore them afterwards."""
    saved = copy.deepcopy(hub_scopes.scope_definitions)
    try:
        yield
    finally:
        hub_scopes.scope_definitions.clear()
        hub_scopes.scope_definitions.update(saved)


def make_spawner(c: Config) -> Any:
    from unittest.mock import Mock

    from jupyterhub.app import JupyterHub
    from jupyterhub.objects import Hub, Server

    spawner_class = JupyterHub(config=c).spawner_class  # the entry point, resolved
    user = Mock()
    user.name = user.escaped_name = "alice"
    user.id = 1
    user.url = "/user/alice/"
    user.settings = {}
    user.server = Server()
    return spawner_class(
        config=c, hub=Hub(), user=user, api_token="t", oauth_client_id="c", _mock=True
    )


def suspend_service_entry(c: Config) -> dict[str, Any]:
    found = [s for s in c.JupyterHub.services if s["name"] == "suspend"]
    assert len(found) == 1, c.JupyterHub.services
    return found[0]


def make_service(c: Config, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The ``suspend`` service as the hub starts it: its command line, and only the
    environment the hub gives a managed service."""
    from jhub_suspend.service.app import SuspendService

    entry = suspend_service_entry(c)
    command = entry["command"]
    assert command[:3] == [sys.executable, "-m", "jhub_suspend.service"]
    for k in list(os.environ):
        if k.startswith(("JHUB_SUSPEND_", "KUBERNETES_", "POD_NAMESPACE", "JUPYTERHUB_")):
            monkeypatch.delenv(k)
    for k, v in {
        **entry["environment"],
        "JUPYTERHUB_API_TOKEN": "service-token",
        "JUPYTERHUB_SERVICE_NAME": "suspend",
        "JUPYTERHUB_SERVICE_URL": entry["url"],
        "JUPYTERHUB_SERVICE_PREFIX": "/services/suspend/",
        "JUPYTERHUB_API_URL": "http://hub:8081/hub/api",
    }.items():
        monkeypatch.setenv(k, v)
    SuspendService.clear_instance()
    svc = SuspendService()
    svc.initialize(command[3:])
    return svc


# ---- parsing and schema -------------------------------------------------------------------


def test_every_file_parses() -> None:
    files = yaml_files()
    assert VALUES in files and GPU_VALUES in files
    for path in files:
        docs = load_docs(path)
        assert docs, f"{path} is empty"
        for doc in docs:
            assert isinstance(doc, dict), f"{path}: a document is not a mapping"
    for path in VALUES_FILES:
        assert len(load_docs(path)) == 1 and "kind" not in load_docs(path)[0]


def test_every_manifest_validates_against_the_kubernetes_schema() -> None:
    checked = set()
    for path, obj in manifests():
        where = f"{path.relative_to(REPO)}: {obj.get('kind')} {obj['metadata'].get('name')}"
        if obj["apiVersion"].startswith(CRD_GROUPS):
            if obj["apiVersion"].startswith("cert-manager.io/"):
                check_cert_manager(obj, where)
            else:
                check_podmonitor(obj, where)
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{where}: {e.message} at {list(e.path)}")
        checked.add(obj["kind"])
    assert {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "DaemonSet",
        "Service",
        "NetworkPolicy",
        "Secret",
        "ValidatingWebhookConfiguration",
    } <= checked


def test_the_validator_rejects_what_it_should() -> None:
    """The schema check is not vacuous: a misspelt field and a wrong type both fail."""
    ds = copy.deepcopy(one("DaemonSet", "jhub-suspend-agent"))
    ds["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSION, strict=True)
    role = copy.deepcopy(one("ClusterRole", "jhub-suspend-agent"))
    role["rules"][0]["verbs"] = "create"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(role, K8S_VERSION, strict=True)


def check_podmonitor(obj: dict[str, Any], where: str) -> None:
    """monitoring.coreos.com CRDs have no schema in kubernetes-validate: check the fields
    Prometheus Operator requires and the ones we rely on."""
    assert obj["kind"] == "PodMonitor", where
    assert obj["apiVersion"] == "monitoring.coreos.com/v1", where
    spec = obj["spec"]
    assert spec["selector"]["matchLabels"], where
    assert set(spec) <= {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel"}
    for ep in spec["podMetricsEndpoints"]:
        assert ("port" in ep) != ("targetPort" in ep), f"{where}: one of port, targetPort"
        assert ep["path"].startswith("/"), where
        assert set(ep) <= {"port", "targetPort", "path", "interval", "honorLabels", "relabelings"}


def check_cert_manager(obj: dict[str, Any], where: str) -> None:
    """cert-manager's CRDs have no schema in kubernetes-validate: check the fields we use
    against the v1 API (an Issuer is self-signed or a CA; a Certificate names its Secret and
    an Issuer)."""
    assert obj["apiVersion"] == "cert-manager.io/v1", where
    spec = obj["spec"]
    if obj["kind"] == "Issuer":
        assert len(spec) == 1 and (spec == {"selfSigned": {}} or "secretName" in spec["ca"]), where
        return
    assert obj["kind"] == "Certificate", where
    assert set(spec) <= {
        "isCA",
        "commonName",
        "dnsNames",
        "secretName",
        "duration",
        "renewBefore",
        "privateKey",
        "usages",
        "issuerRef",
    }, where
    assert spec["secretName"] and spec["issuerRef"]["kind"] == "Issuer", where
    assert set(spec["privateKey"]) <= {"algorithm", "size", "rotationPolicy"}, where
    for key in ("duration", "renewBefore"):
        if key in spec:
            assert re.fullmatch(r"\d+h", spec[key]), where


def test_values_fragments_validate_as_kubernetes_objects() -> None:
    """The parts of the values that z2jh copies into Kubernetes objects."""
    vals = values(VALUES, GPU_VALUES)
    env = [{"name": k, **v} for k, v in vals["hub"]["extraEnv"].items()]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "hub"},
        "spec": {
            "containers": [
                {
                    "name": "hub",
                    "image": "x",
                    "env": env,
                    "resources": vals["hub"]["resources"],
                    "volumeMounts": vals["hub"]["extraVolumeMounts"],
                }
            ],
            "volumes": vals["hub"]["extraVolumes"],
            "imagePullSecrets": [{"name": n} for n in vals["singleuser"]["image"]["pullSecrets"]],
        },
    }
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    for profile in vals["singleuser"]["profileList"]:
        override = profile.get("kubespawner_override", {})
        user_pod = copy.deepcopy(pod)
        user_pod["spec"]["tolerations"] = override.get("tolerations", [])
        user_pod["spec"]["nodeSelector"] = override.get("node_selector", {})
        kubernetes_validate.validate(user_pod, K8S_VERSION, strict=True)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "hub"},
        "spec": {"ports": [{"name": "hub", "port": 8081}, *vals["hub"]["service"]["extraPorts"]]},
    }
    kubernetes_validate.validate(service, K8S_VERSION, strict=True)
    netpol = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "hub"},
        "spec": {"podSelector": {}, "ingress": vals["hub"]["networkPolicy"]["ingress"]},
    }
    kubernetes_validate.validate(netpol, K8S_VERSION, strict=True)


# ---- the rendered JupyterHub configuration ----------------------------------------------------


@pytest.mark.parametrize("files", [(VALUES,), (VALUES, GPU_VALUES)], ids=["cpu", "gpu"])
async def test_values_configure_the_spawner(
    files: tuple[Path, ...], hub_env: dict[str, str]
) -> None:
    from jhub_suspend.restore import CheckpointImageDriver
    from jhub_suspend.spawner import SuspendingKubeSpawner

    vals = values(*files)
    spawner = make_spawner(z2jh_config(vals))
    assert type(spawner) is SuspendingKubeSpawner
    settings = vals["hub"]["config"]["SuspendingKubeSpawner"]
    assert spawner.suspend_on_stop is settings["suspend_on_stop"] is False
    assert spawner.checkpoint_repository == settings["checkpoint_repository"]
    assert spawner.checkpoint_timeout == settings["checkpoint_timeout"] == 600
    assert spawner.keep_used_checkpoints is settings["keep_used_checkpoints"] is False
    assert spawner.namespace == HUB_NAMESPACE
    # the token reaches the spawner from the Secret, through hub.extraEnv
    assert spawner.agent_token == hub_env["JHUB_SUSPEND_AGENT_TOKEN"]
    ref = vals["hub"]["extraEnv"]["JHUB_SUSPEND_AGENT_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert secret_has_key(HUB_NAMESPACE, ref["name"], ref["key"])
    # the agent on the pod's node, on the DaemonSet's port
    agent = spawner.agent_for("node-a", "10.0.0.7")
    assert agent.base_url.rstrip("/") == f"http://10.0.0.7:{agent_port()}"
    assert isinstance(spawner.restore_driver, CheckpointImageDriver)
    assert spawner.restore_driver.node_selector_terms == []
    # restored pods can pull their checkpoint image
    pull = [s if isinstance(s, str) else s["name"] for s in spawner.image_pull_secrets]
    assert pull == ["jhub-suspend-registry-pull"]
    assert secret_of_type(
        HUB_NAMESPACE, "jhub-suspend-registry-pull", "kubernetes.io/dockerconfigjson"
    )
    if GPU_VALUES in files:
        gpu = [p for p in spawner.profile_list if p["slug"] == "gpu-1"]
        assert gpu and gpu[0]["kubespawner_override"]["extra_resource_limits"] == {
            "nvidia.com/gpu": "1"
        }
        tolerated = {t["key"] for t in gpu[0]["kubespawner_override"]["tolerations"]}
        assert "nvidia.com/gpu" in tolerated
        assert "CUDA_VISIBLE_DEVICES" not in gpu[0]["kubespawner_override"].get("environment", {})


def test_values_define_the_custom_scope_and_roles(
    hub_env: dict[str, str], custom_scopes_defined: None
) -> None:
    from jhub_suspend.service.app import ADMIN_SCOPE

    c = z2jh_config(values())
    assert ADMIN_SCOPE in c.JupyterHub.custom_scopes
    hub_scopes.define_custom_scopes(c.JupyterHub.custom_scopes)
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    for role in roles.values():  # every scope exists (custom ones included); filters parse
        hub_scopes._check_scopes_exist(role["scopes"], who_for=f"role {role['name']}")
    service_role = roles["jhub-suspend-service"]
    assert service_role["services"] == ["suspend"]
    assert not {"users", "groups", "admin"} & set(service_role)  # only the service holds it
    assert "access:services!service=suspend" in roles["user"]["scopes"]
    assert "self" in roles["user"]["scopes"]  # the default user role keeps what it had
    assert ADMIN_SCOPE in roles["jhub-suspend-admins"]["scopes"]


# Hub scopes the service must never hold: it acts on servers, not on users, tokens or the hub.
FORBIDDEN_HUB_SCOPES = {
    "admin:users",
    "admin:groups",
    "admin-ui",
    "users",
    "tokens",
    "users:tokens",
    "admin:auth_state",
    "inherit",
    "shutdown",
    "proxy",
    "admin:servers",
    "access:servers",
}


def test_the_service_holds_only_the_hub_scopes_it_needs() -> None:
    roles = values()["hub"]["loadRoles"]
    scopes = set(roles["jhub-suspend-service"]["scopes"])
    assert not scopes & FORBIDDEN_HUB_SCOPES
    assert scopes == {
        "list:users",
        "read:users:name",
        "read:users:groups",
        "read:users:activity",
        "read:servers",
        "admin:server_state",
        "servers",
    }
    for name, role in roles.items():
        if name != "jhub-suspend-service":
            assert not set(role["scopes"]) & FORBIDDEN_HUB_SCOPES, name


@pytest.mark.parametrize("files", [(VALUES,), (VALUES, GPU_VALUES)], ids=["cpu", "gpu"])
def test_values_configure_the_suspend_service(
    files: tuple[Path, ...], hub_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    vals = values(*files)
    c = z2jh_config(vals)
    entry = suspend_service_entry(c)
    svc = make_service(c, monkeypatch)
    settings = vals["hub"]["config"]["SuspendService"]
    for key in (
        "prometheus_url",
        "cpu_threshold",
        "idle_window",
        "activity_timeout",
        "gpu_threshold",
        "gpu_idle_window",
        "gpu_activity_timeout",
        "min_coverage",
        "cycle_interval",
        "max_suspensions_per_cycle",
        "max_concurrent_suspensions",
        "warn_before",
        "used_checkpoint_retention",
        "agent_url",
        "dry_run",
    ):
        assert getattr(svc, key) == settings[key], key
    assert svc.policy_config.idle_window == settings["idle_window"]
    assert svc.policy_config.max_keep_running == settings["max_keep_running"]
    assert svc.max_suspended_age is None
    # shared with the spawner, and from the hub's environment
    spawner_settings = vals["hub"]["config"]["SuspendingKubeSpawner"]
    assert svc.checkpoint_repository == spawner_settings["checkpoint_repository"]
    assert svc.agent_token == hub_env["JHUB_SUSPEND_AGENT_TOKEN"]
    assert svc.namespace == HUB_NAMESPACE
    assert entry["environment"]["KUBERNETES_SERVICE_HOST"] == hub_env["KUBERNETES_SERVICE_HOST"]
    # the hub on loopback; listening where the hub Service's extra port sends the proxy
    assert svc.hub_api_url == "http://127.0.0.1:8081/hub/api"
    assert svc.ip == ""
    url = urlparse(entry["url"])
    port = hub_service_port("suspend")
    assert url.hostname == "hub" and url.port == svc.port == port["port"] == port["targetPort"]
    ingress_ports = {
        p["port"] for rule in vals["hub"]["networkPolicy"]["ingress"] for p in rule["ports"]
    }
    assert ingress_ports == {svc.port, svc.webhook_port}
    # the eviction webhook (see test_the_eviction_webhook_reaches_the_service)
    assert svc.webhook_certfile == settings["webhook_certfile"]
    assert svc.eviction_hold_seconds == settings["eviction_hold_seconds"] == 3600
    # the agents' Service, for image deletes
    agent_service = one("Service", "jhub-suspend-agent")
    assert urlparse(svc.agent_url).hostname == f"jhub-suspend-agent.{AGENT_NAMESPACE}.svc"
    assert urlparse(svc.agent_url).port == agent_service["spec"]["ports"][0]["port"]
    if GPU_VALUES in files:
        assert svc.names.gpu_pod == "exported_pod"
        assert svc.names.gpu_namespace == "exported_namespace"
        assert 'exported_pod=~"jupyter-.*"' in svc.queries.gpu.max
    else:
        assert svc.names.gpu_pod == "pod"


@pytest.mark.parametrize(
    ("section", "key", "bad"),
    [
        ("SuspendService", "cpu_threshold", 1.5),
        ("SuspendService", "min_coverage", -0.1),
        ("SuspendService", "gpu_source", "nvml"),
        ("SuspendService", "metric_names", {"gpu_podd": "exported_pod"}),
        ("SuspendService", "metric_names", {"gpu_pod": "exported pod"}),
        ("SuspendService", "idle_window", "an hour"),
    ],
)
def test_invalid_service_settings_are_rejected(
    section: str, key: str, bad: Any, hub_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    vals = values()
    vals["hub"]["config"][section][key] = bad
    c = z2jh_config(vals)
    with pytest.raises((TraitError, SystemExit)):
        make_service(c, monkeypatch)


def test_a_service_without_prometheus_is_rejected(
    hub_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    vals = values()
    del vals["hub"]["config"]["SuspendService"]["prometheus_url"]
    with pytest.raises((TraitError, SystemExit)):
        make_service(z2jh_config(vals), monkeypatch)


@pytest.mark.parametrize(
    ("section", "key", "bad"),
    [
        ("SuspendingKubeSpawner", "checkpoint_repository", "https://registry.example.org/x"),
        ("SuspendingKubeSpawner", "checkpoint_timeout", "five minutes"),
        ("SuspendingKubeSpawner", "suspend_on_stop", "sometimes"),
        ("CheckpointImageDriver", "node_selector_terms", {"key": "x"}),
        ("JupyterHub", "spawner_class", "suspending-kubespawnr"),
    ],
)
async def test_invalid_spawner_settings_are_rejected(
    section: str, key: str, bad: Any, hub_env: dict[str, str]
) -> None:
    vals = values()
    vals["hub"]["config"][section][key] = bad
    c = z2jh_config(vals)
    # (the spawner's own validators raise ValueError, which traitlets passes on as is)
    with pytest.raises((TraitError, ValueError)):
        make_spawner(c).restore_driver  # noqa: B018 (instantiates the driver)


def test_hub_config_sections_are_configurable_classes() -> None:
    """z2jh exits at start on a lower-case hub.config section (a misplaced key)."""
    for files in ((VALUES,), (VALUES, GPU_VALUES)):
        for section in values(*files)["hub"]["config"]:
            assert section[:1].isupper(), section
    bad = values()
    bad["hub"]["config"]["loadRoles"] = {}
    with pytest.raises(SystemExit):
        z2jh_config(bad)


def test_hub_image_installs_the_package_and_the_templates() -> None:
    dockerfile = (HELM / "hub-image" / "Dockerfile").read_text()
    assert re.search(r"^FROM quay\.io/jupyterhub/k8s-hub:", dockerfile, re.M)
    assert "pip install" in dockerfile
    (template_dir,) = values()["hub"]["config"]["JupyterHub"]["template_paths"]
    assert re.search(rf"^COPY .*templates/ {re.escape(template_dir)}/?$", dockerfile, re.M)
    assert (REPO / "templates").is_dir()
    agent_dockerfile = (HELM / "agent-image" / "Dockerfile").read_text()
    assert "skopeo" in agent_dockerfile and "buildah" not in agent_dockerfile


# ---- the agent ---------------------------------------------------------------------------------


def agent_daemonset() -> dict[str, Any]:
    return one("DaemonSet", "jhub-suspend-agent")


def agent_container() -> dict[str, Any]:
    (container,) = agent_daemonset()["spec"]["template"]["spec"]["containers"]
    return container


def agent_port() -> int:
    (port,) = agent_container()["ports"]
    return int(port["containerPort"])


def secret_has_key(namespace: str, name: str, key: str) -> bool:
    for s in objects("Secret", name):
        if s["metadata"]["namespace"] == namespace:
            return key in (s.get("stringData") or {}) or key in (s.get("data") or {})
    return False


def secret_of_type(namespace: str, name: str, type_: str) -> bool:
    return any(
        s["metadata"]["namespace"] == namespace and s.get("type") == type_
        for s in objects("Secret", name)
    )


def expand(arg: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion in args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), arg)


def test_agent_arguments_make_a_working_node_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    from jhub_suspend.agent.app import NodeAgent

    container = agent_container()
    downward = {"spec.nodeName": "node-a", "status.hostIP": "10.0.0.7"}
    env: dict[str, str] = {}
    for var in container["env"]:
        source = var.get("valueFrom", {})
        if "fieldRef" in source:
            env[var["name"]] = downward[source["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            assert secret_has_key(AGENT_NAMESPACE, ref["name"], ref["key"]), ref
            env[var["name"]] = "agent-token-from-the-secret"
        else:
            env[var["name"]] = var["value"]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert container["command"] == ["jhub-suspend-agent"]
    NodeAgent.clear_instance()
    agent = NodeAgent()
    agent.initialize([expand(a, env) for a in container["args"]])
    agent.check_config()  # repository and token set, TLS settings consistent
    assert agent.node_name == "node-a"
    assert agent.kubelet_url == "https://10.0.0.7:10250"
    assert agent.ip == "10.0.0.7"
    assert agent.port == agent_port() == 9770
    assert agent.api_token == "agent-token-from-the-secret"
    # the same repository the spawner pushes to (the agent refuses others with 403)
    spawner_repo = values()["hub"]["config"]["SuspendingKubeSpawner"]["checkpoint_repository"]
    assert agent.repository == spawner_repo
    # mounts: the kubelet's checkpoint directory at the same path; a writable TMPDIR
    spec = agent_daemonset()["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    ckpt = mounts[agent.checkpoint_dir]
    assert volumes[ckpt["name"]]["hostPath"]["path"] == agent.checkpoint_dir
    assert agent.checkpoint_dir == "/var/lib/kubelet/checkpoints"
    # The other host paths are the node's CRIU configuration and, for GPU nodes, CRIU's
    # plugin directory and the CDI specs: read only, where the agent looks for them.
    criu = mounts["/etc/criu"]
    assert criu["readOnly"] and volumes[criu["name"]]["hostPath"]["path"] == "/etc/criu"
    assert {os.path.dirname(f) for f in agent.criu_config_files} == {"/etc/criu"}
    read_only = ["/etc/criu", agent.criu_plugin_dir, *agent.cdi_spec_dirs]
    for path in read_only:
        assert mounts[path]["readOnly"], path
        assert volumes[mounts[path]["name"]]["hostPath"]["path"] == path
    hostpaths = [v["hostPath"]["path"] for v in volumes.values() if "hostPath" in v]
    assert sorted(hostpaths) == sorted([*read_only, agent.checkpoint_dir])

    def volume_for(path: str) -> dict[str, Any]:
        best = max((m for m in mounts if f"{path}/".startswith(m.rstrip("/") + "/")), key=len)
        return volumes[mounts[best]["name"]] | {"readOnly": mounts[best].get("readOnly", False)}

    vol = volume_for(env["TMPDIR"])
    assert "emptyDir" in vol and not vol["readOnly"]
    auth = volume_for(agent.registry_auth_file)
    assert auth["readOnly"] and auth["secret"]["secretName"] == "jhub-suspend-registry-push"
    assert os.path.basename(agent.registry_auth_file) in {
        i["path"] for i in auth["secret"]["items"]
    }
    assert secret_of_type(
        AGENT_NAMESPACE, "jhub-suspend-registry-push", "kubernetes.io/dockerconfigjson"
    )
    # the agent token is the same Secret key name on both sides
    assert secret_has_key(HUB_NAMESPACE, "jhub-suspend", "agent-token")


def test_agent_pod_spec() -> None:
    ds = agent_daemonset()
    spec = ds["spec"]["template"]["spec"]
    container = agent_container()
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    spawner_settings = values()["hub"]["config"]["SuspendingKubeSpawner"]
    assert spawner_settings["agent_url"] == f"http://{{host_ip}}:{agent_port()}"
    assert not spec.get("hostPID") and not spec.get("hostIPC")
    assert spec["serviceAccountName"] == "jhub-suspend-agent"
    sc = container["securityContext"]
    assert sc["privileged"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    # the agent only reads and hard-links root's archives and streams them: no capability
    assert not sc["capabilities"].get("add")
    assert "appArmorProfile" not in sc
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": agent_port()}
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(agent_port())
    assert annotations["prometheus.io/path"] == "/metrics"
    # it runs on tainted GPU and user nodes too
    gpu_taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    assert any(tolerates(t, gpu_taint) for t in spec["tolerations"])
    # the terminationGracePeriod covers the shutdown wait for running checkpoints
    shutdown = next(a for a in container["args"] if "shutdown_timeout" in a)
    assert spec["terminationGracePeriodSeconds"] > float(shutdown.split("=")[1])


def tolerates(toleration: dict[str, Any], taint: dict[str, str]) -> bool:
    if toleration.get("effect") not in (None, "", taint["effect"]):
        return False
    if toleration.get("operator") == "Exists":
        return toleration.get("key") in (None, "", taint["key"])
    return toleration.get("key") == taint["key"] and toleration.get("value") == taint["value"]


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_agent_selectors_and_network_policy() -> None:
    ds = agent_daemonset()
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert labels_match(ds["spec"]["selector"]["matchLabels"], pod_labels)
    assert labels_match(one("Service", "jhub-suspend-agent")["spec"]["selector"], pod_labels)
    netpol = one("NetworkPolicy", "jhub-suspend-agent")
    assert netpol["metadata"]["namespace"] == AGENT_NAMESPACE
    assert labels_match(netpol["spec"]["podSelector"]["matchLabels"], pod_labels)
    assert netpol["spec"]["policyTypes"] == ["Ingress"]
    sources = []
    for rule in netpol["spec"]["ingress"]:
        assert [p["port"] for p in rule["ports"]] == [agent_port()]
        sources.extend(rule["from"])
    # the hub pod (spawner and service) in the hub namespace, and the monitoring namespace
    hub_sources = [s for s in sources if "podSelector" in s]
    assert len(hub_sources) == 1
    (hub,) = hub_sources
    assert hub["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": HUB_NAMESPACE}
    assert labels_match(hub["podSelector"]["matchLabels"], HUB_POD_LABELS)
    singleuser = {"app": "jupyterhub", "component": "singleuser-server", "release": "jhub"}
    assert not labels_match(hub["podSelector"]["matchLabels"], singleuser)
    others = [s for s in sources if "podSelector" not in s]
    assert [s["namespaceSelector"]["matchLabels"] for s in others] == [
        {"kubernetes.io/metadata.name": "monitoring"}
    ]
    assert not any("ipBlock" in s for s in sources)
    # with hostNetwork agents the gate for notebooks is z2jh's singleuser egress policy
    assert values()["singleuser"]["networkPolicy"]["egressAllowRules"]["privateIPs"] is False


def test_namespaces_agree() -> None:
    for path, obj in manifests():
        ns = obj["metadata"].get("namespace")
        cluster_scoped = ("Namespace", "ClusterRole", "ClusterRoleBinding")
        if obj["kind"] in (*cluster_scoped, "ValidatingWebhookConfiguration"):
            assert ns is None, path
        elif "gpu-dcgm" not in path.name:
            assert ns in (HUB_NAMESPACE, AGENT_NAMESPACE), f"{path}: {obj['kind']} in {ns}"
    assert (
        one("Namespace", AGENT_NAMESPACE)["metadata"]["labels"][
            "pod-security.kubernetes.io/enforce"
        ]
        == "privileged"
    )


# ---- the eviction webhook ------------------------------------------------------------------------


def hub_service_port(name: str) -> dict[str, Any]:
    (port,) = [p for p in values()["hub"]["service"]["extraPorts"] if p["name"] == name]
    return port


def test_the_eviction_webhook_reaches_the_service(
    hub_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API server's way to the webhook: the configuration's service, the hub Service's
    port, the service's listener, the certificate's name, the Secret mounted where the
    service reads it, and the CA injected from the certificate that signs it."""
    vals = values()
    svc = make_service(z2jh_config(vals), monkeypatch)
    config = one("ValidatingWebhookConfiguration", "jhub-suspend-eviction")
    (hook,) = config["webhooks"]
    target = hook["clientConfig"]["service"]
    assert (target["namespace"], target["name"]) == (HUB_NAMESPACE, "hub")  # z2jh's Service
    port = hub_service_port("eviction-webhook")
    assert target["port"] == port["port"] and port["targetPort"] == svc.webhook_port
    assert target["path"] == "/eviction"
    assert svc.webhook_ip == ""  # every interface: the API server calls from outside the pod
    serving = one("Certificate", "jhub-suspend-webhook")
    assert f"{target['name']}.{target['namespace']}.svc" in serving["spec"]["dnsNames"]
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{serving['metadata']['namespace']}/{serving['metadata']['name']}"
    )
    issuer = one("Issuer", serving["spec"]["issuerRef"]["name"])
    ca = one("Certificate", "jhub-suspend-webhook-ca")
    assert issuer["spec"]["ca"]["secretName"] == ca["spec"]["secretName"] and ca["spec"]["isCA"]
    (volume,) = [
        v
        for v in vals["hub"]["extraVolumes"]
        if v["secret"]["secretName"] == serving["spec"]["secretName"]
    ]
    (mount,) = [m for m in vals["hub"]["extraVolumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    assert svc.webhook_certfile == f"{mount['mountPath']}/tls.crt"  # cert-manager's key names
    assert svc.webhook_keyfile == f"{mount['mountPath']}/tls.key"


def test_the_eviction_webhook_sees_only_notebook_evictions_and_fails_closed(
    hub_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = make_service(z2jh_config(values()), monkeypatch)
    (hook,) = one("ValidatingWebhookConfiguration", "jhub-suspend-eviction")["webhooks"]
    # never lose a notebook: while the service cannot answer, its evictions fail
    assert hook["failurePolicy"] == "Fail"
    assert hook["sideEffects"] == "NoneOnDryRun" and hook["admissionReviewVersions"] == ["v1"]
    assert 1 <= hook["timeoutSeconds"] <= 30
    assert hook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods/eviction"],
            "scope": "Namespaced",
        }
    ]
    assert hook["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": svc.namespace}
    }
    # an objectSelector is matched against the Eviction, never the pod: it must not be used
    assert "objectSelector" not in hook
    (condition,) = hook["matchConditions"]
    prefix = re.fullmatch(r'request\.name\.startsWith\("([a-z0-9-]+)"\)', condition["expression"])
    assert prefix is not None
    assert svc.pod_regex == prefix[1] + ".*"  # the pods the service assesses


# ---- RBAC ----------------------------------------------------------------------------------------

FORBIDDEN_RESOURCES = {
    "nodes/proxy",
    "pods/exec",
    "pods/attach",
    "pods/portforward",
    "serviceaccounts/token",
}


def rbac_violations(rule: dict[str, Any]) -> list[str]:
    """What is wrong with one RBAC rule under jhub-suspend's least-privilege policy."""
    problems = []
    verbs, resources = rule.get("verbs", []), rule.get("resources", [])
    if "*" in verbs:
        problems.append("wildcard verb")
    if any("*" in r for r in resources) or "*" in rule.get("apiGroups", []):
        problems.append("wildcard resource or API group")
    if rule.get("nonResourceURLs"):
        problems.append("non-resource URLs")
    if bad := FORBIDDEN_RESOURCES & set(resources):
        problems.append(f"grants {sorted(bad)}")
    if {"escalate", "bind", "impersonate"} & set(verbs):
        problems.append("privilege-escalation verbs")
    if "secrets" in resources:
        names = set(rule.get("resourceNames") or [])
        if not names or not names <= REGISTRY_SECRETS:
            problems.append("secrets beyond the registry Secret")
    return problems


@pytest.mark.parametrize(
    "rule",
    [
        {"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["nodes/checkpoint"], "verbs": ["*"]},
        {"apiGroups": [""], "resources": ["*"], "verbs": ["get"]},
        {"apiGroups": ["*"], "resources": ["nodes"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["jhub-suspend-registry-push", "hub"],
            "verbs": ["get"],
        },
    ],
)
def test_the_rbac_check_catches_broad_rules(rule: dict[str, Any]) -> None:
    assert rbac_violations(rule)


def test_rbac_is_least_privilege() -> None:
    roles = objects("ClusterRole") + objects("Role")
    assert roles
    for role in roles:
        for rule in role["rules"]:
            assert not rbac_violations(rule), (role["metadata"]["name"], rule)
    assert rbac_violations(
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["x"], "verbs": ["get"]}
    )
    assert not rbac_violations(
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["jhub-suspend-registry-push"],
            "verbs": ["get"],
        }
    )


def bound_subjects(role_kind: str, role_name: str) -> list[dict[str, Any]]:
    binding_kind = "ClusterRoleBinding" if role_kind == "ClusterRole" else "RoleBinding"
    out = []
    for b in objects(binding_kind):
        if b["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role_kind,
            "name": role_name,
        }:
            out.extend(b["subjects"])
    return out


def test_agent_role_is_exactly_create_nodes_checkpoint() -> None:
    role = one("ClusterRole", "jhub-suspend-agent")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["nodes/checkpoint"], "verbs": ["create"]}
    ]
    assert bound_subjects("ClusterRole", "jhub-suspend-agent") == [
        {"kind": "ServiceAccount", "name": "jhub-suspend-agent", "namespace": AGENT_NAMESPACE}
    ]
    account = one("ServiceAccount", "jhub-suspend-agent")
    assert account["metadata"]["namespace"] == AGENT_NAMESPACE
    # the agent is bound to nothing else
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        for b in objects(kind):
            if b["roleRef"]["name"] != "jhub-suspend-agent":
                assert all(s["name"] != "jhub-suspend-agent" for s in b["subjects"]), b


def test_hub_gets_only_what_z2jh_lacks() -> None:
    hub_sa = {"kind": "ServiceAccount", "name": "hub", "namespace": HUB_NAMESPACE}
    nodes = one("ClusterRole", "jhub-suspend-hub-nodes")
    assert nodes["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]}]
    assert bound_subjects("ClusterRole", "jhub-suspend-hub-nodes") == [hub_sa]
    pods = one("Role", "jhub-suspend-hub-pods")
    assert pods["metadata"]["namespace"] == HUB_NAMESPACE
    assert pods["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}]
    assert bound_subjects("Role", "jhub-suspend-hub-pods") == [hub_sa]
    all_rules = [r for role in objects("ClusterRole") + objects("Role") for r in role["rules"]]
    assert not any("secrets" in r.get("resources", []) for r in all_rules)


# ---- secrets and the cluster check script ----------------------------------------------------------


def test_example_secrets_hold_placeholders_only() -> None:
    secrets = objects("Secret")
    assert {s["metadata"]["name"] for s in secrets} == {
        "jhub-suspend",
        "jhub-suspend-agent",
        "jhub-suspend-registry-pull",
        "jhub-suspend-registry-push",
    }
    for s in secrets:
        assert "data" not in s, "examples use stringData placeholders, never encoded values"
        for key, value in s["stringData"].items():
            if key == ".dockerconfigjson":
                auths = json.loads(value)["auths"]
                for host, entry in auths.items():
                    assert "REPLACE_ME" in host and all("REPLACE_ME" in v for v in entry.values())
            else:
                assert value == "REPLACE_ME", key
    # no inline credentials anywhere in the values
    for path in VALUES_FILES:
        text = path.read_text().lower()
        assert not re.search(r"^\s*(password|auth_token|api_token|apitoken)\s*:", text, re.M)


def test_check_script_is_documented_and_kept_out_of_ci() -> None:
    text = CHECK_SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert os.access(CHECK_SCRIPT, os.X_OK)
    assert "not run in CI" in text
    assert "set -euo pipefail" in text
    assert "scripts/check-cluster.sh" in (REPO / "docs" / "deploy.md").read_text()
    subprocess.run(["bash", "-n", str(CHECK_SCRIPT)], check=True)
    shellcheck = require_command("shellcheck", "run scripts/install.sh, which installs shellcheck")
    subprocess.run([shellcheck, "-x", str(CHECK_SCRIPT)], check=True)
