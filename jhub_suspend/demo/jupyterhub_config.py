"""JupyterHub configuration for the demo and the tests, on the local cluster.

It reads where the cluster listens from ``cluster.json`` (``JHUB_SUSPEND_CLUSTER``) and the
ports and secrets chosen by ``jhub_suspend.demo.hub`` from the environment, so the same file
serves the demo and every test hub. Site-specific additions go in a second file that loads this
one with ``load_subconfig``.
"""

import json
import os
import sys

import jhub_suspend

c = get_config()  # type: ignore[name-defined]  # noqa: F821

with open(os.environ["JHUB_SUSPEND_CLUSTER"]) as f:
    cluster = json.load(f)
state = os.environ["JHUB_SUSPEND_HUB_STATE"]
# KubeSpawner's shared client loads the kubeconfig named here.
os.environ["KUBECONFIG"] = cluster["kubeconfig"]

c.JupyterHub.bind_url = os.environ.get("JHUB_SUSPEND_HUB_URL", "http://127.0.0.1:8000")
# Pods reach the hub on the bridge's gateway address, as pods on a real cluster reach its Service.
hub_url = f"http://{cluster['gateway']}:{os.environ.get('JHUB_SUSPEND_HUB_PORT', '8081')}"
c.JupyterHub.hub_bind_url = hub_url
c.JupyterHub.hub_connect_url = hub_url
c.ConfigurableHTTPProxy.api_url = os.environ.get(
    "JHUB_SUSPEND_PROXY_API_URL", "http://127.0.0.1:8001"
)
c.ConfigurableHTTPProxy.command = [
    os.environ.get("JHUB_SUSPEND_CHP", "/opt/jhub-suspend/bin/configurable-http-proxy")
]
c.JupyterHub.db_url = f"sqlite:///{state}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{state}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = f"{state}/jupyterhub.pid"
c.ConfigurableHTTPProxy.pid_file = f"{state}/jupyterhub-proxy.pid"
c.JupyterHub.cleanup_servers = False

c.JupyterHub.authenticator_class = "shared-password"
c.SharedPasswordAuthenticator.user_password = os.environ["JHUB_SUSPEND_USER_PASSWORD"]
c.SharedPasswordAuthenticator.admin_password = os.environ["JHUB_SUSPEND_ADMIN_PASSWORD"]
c.Authenticator.admin_users = {"admin"}
c.Authenticator.allow_all = True
c.JupyterHub.allow_named_servers = True
# A restore takes a few seconds; show the spawn page at once so its progress (pulling the
# checkpoint, restoring, or why it fell back to a fresh server) is seen, not skipped.
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}
# The hub UI of jhub-suspend (templates/ of this repository, next to the jhub_suspend package):
# Suspend/Resume/Discard on the home page, restore progress, the warning banner.
c.JupyterHub.template_paths = [
    os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(jhub_suspend.__file__))), "templates"
    )
]

if token := os.environ.get("JHUB_SUSPEND_SERVICE_TOKEN"):
    # A token for the tests and the demo's self-check, with admin rights on servers and users.
    c.JupyterHub.services = [{"name": "jhub-suspend-admin", "api_token": token}]
    c.JupyterHub.load_roles = [
        {
            "name": "jhub-suspend-admin",
            "scopes": [
                "admin:users",
                "admin:servers",
                "admin:server_state",
                "access:servers",
                "tokens",
            ],
            "services": ["jhub-suspend-admin"],
        }
    ]

c.JupyterHub.spawner_class = os.environ.get("JHUB_SUSPEND_SPAWNER", "suspending-kubespawner")
c.KubeSpawner.namespace = "default"
# The notebook image that scripts/install.sh builds (Python, jupyterhub-singleuser, JupyterLab and
# jhub-suspend's Lab extension), pushed to the cluster's registry and run by containerd with the
# image's own command (jupyterhub-singleuser). The volume is group-owned by fsGroup 100, as on
# Zero to JupyterHub.
c.KubeSpawner.image = cluster["images"]["notebook"]
c.KubeSpawner.fs_gid = 100
# The image's user is jovyan (uid 1000), but here notebooks run as root: root on these machines
# lacks CAP_SYS_RESOURCE, without which CRIU cannot read the rlimits of another user's process
# ("Can't get rlimit 0: Operation not permitted"). Root on a real node has it, and there
# notebooks run as the image's user (see docs/localcluster.md).
c.KubeSpawner.uid = 0
c.KubeSpawner.cmd = ["jupyterhub-singleuser"]
c.KubeSpawner.args = ["--allow-root"]
c.KubeSpawner.cpu_guarantee = 0.5
c.KubeSpawner.mem_guarantee = "512M"
c.KubeSpawner.storage_pvc_ensure = True
c.KubeSpawner.storage_capacity = "1Gi"
c.KubeSpawner.volumes = [{"name": "home", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}]
c.KubeSpawner.volume_mounts = [{"name": "home", "mountPath": "/home/jovyan"}]
c.KubeSpawner.working_dir = "/home/jovyan"
# Users land in JupyterLab, with jhub-suspend's Lab extension (the warning before an automatic
# suspension, and Resume after one), which the image installs as `pip install jhub-suspend` does
# into share/jupyter/labextensions. The image also turns off Lab's news announcements: the local
# cluster has no internet.
c.KubeSpawner.default_url = "/lab"
c.KubeSpawner.start_timeout = 120
c.KubeSpawner.http_timeout = 60
c.KubeSpawner.delete_grace_period = 1

# jhub-suspend: the node agents and the registry of the local cluster.
c.SuspendingKubeSpawner.checkpoint_repository = cluster["checkpoint_repository"]
c.SuspendingKubeSpawner.agent_urls = cluster["agents"]
with open(cluster["agent_token_file"]) as f:
    c.SuspendingKubeSpawner.agent_token = f.read().strip()

# ---- jhub-suspend service (begin) -------------------------------------------------------------
# The hub-managed service `suspend` at /services/suspend/: the idle policy loop, the REST API and
# /metrics. A hub-managed service gets only the environment given here (plus PATH and the
# JUPYTERHUB_* variables), so everything it needs is passed explicitly. Tests add settings with a
# config file named by JHUB_SUSPEND_SERVICE_CONFIG (start_hub(service_config=...)), or by
# editing `c.JupyterHub.services` in their extra_config.
suspend_command = [sys.executable, "-m", "jhub_suspend.service"]
if service_config := os.environ.get("JHUB_SUSPEND_SERVICE_CONFIG"):
    suspend_command += ["-f", service_config]
with open(cluster["agent_token_file"]) as f:
    suspend_agent_token = f.read().strip()
c.JupyterHub.services = [
    *(c.JupyterHub.services if "services" in c.JupyterHub else []),
    {
        "name": "suspend",
        "display": True,
        "url": f"http://127.0.0.1:{os.environ.get('JHUB_SUSPEND_SERVICE_PORT', '10101')}",
        "command": suspend_command,
        "cwd": state,
        "oauth_no_confirm": True,
        "environment": {
            "KUBECONFIG": cluster["kubeconfig"],
            "POD_NAMESPACE": "default",
            "JHUB_SUSPEND_PROMETHEUS_URL": cluster["prometheus"],
            "JHUB_SUSPEND_AGENT_URLS": json.dumps(cluster["agents"]),
            "JHUB_SUSPEND_AGENT_TOKEN": suspend_agent_token,
            "JHUB_SUSPEND_CHECKPOINT_REPOSITORY": cluster["checkpoint_repository"],
        },
    },
]
# Holders of this scope are admins of the service (as are hub admins): they may act on every
# server and read the policy's plan.
c.JupyterHub.custom_scopes = {
    "custom:jhub-suspend:admin": {
        "description": "Suspend, resume and discard any user's server; read the idle plan.",
    },
}
c.JupyterHub.load_roles = [
    *(c.JupyterHub.load_roles if "load_roles" in c.JupyterHub else []),
    {
        # What the service needs from the hub, and nothing more: list users and their servers
        # with spawner state and activity, and start/stop servers.
        "name": "jhub-suspend-service",
        "scopes": [
            "list:users",
            "read:users:name",
            "read:users:groups",
            "read:users:activity",
            "read:servers",
            "admin:server_state",
            "servers",
        ],
        "services": ["suspend"],
    },
    {
        # Every user may use the service (for their own servers).
        "name": "user",
        "scopes": ["self", "access:services!service=suspend"],
    },
    {
        "name": "jhub-suspend-admins",
        "scopes": ["custom:jhub-suspend:admin", "access:services!service=suspend"],
        "users": ["admin"],
        "services": ["jhub-suspend-admin"] if os.environ.get("JHUB_SUSPEND_SERVICE_TOKEN") else [],
    },
]
# ---- jhub-suspend service (end) ---------------------------------------------------------------
