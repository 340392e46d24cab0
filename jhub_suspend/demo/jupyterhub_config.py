"""JupyterHub configuration for the demo and the tests, on the local cluster.

It reads where the cluster listens from ``cluster.json`` (``JHUB_SUSPEND_CLUSTER``) and the
ports and secrets chosen by ``jhub_suspend.demo.hub`` from the environment, so the same file
serves the demo and every test hub. Site-specific additions go in a second file that loads this
one with ``load_subconfig``.
"""

import json
import os
import sys

c = get_config()  # type: ignore[name-defined]  # noqa: F821

with open(os.environ["JHUB_SUSPEND_CLUSTER"]) as f:
    cluster = json.load(f)
state = os.environ["JHUB_SUSPEND_HUB_STATE"]
venv_bin = os.path.dirname(sys.executable)
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
# The image is recorded in the pod but not run: the local cluster runs the command on the host.
c.KubeSpawner.image = "quay.io/jupyter/base-notebook:latest"
c.KubeSpawner.cmd = [os.path.join(venv_bin, "jupyterhub-singleuser")]
# Notebooks run as root on the local cluster: its pods share the host's /proc, so CRIU's
# parasite must be able to mount a /proc for the pod's PID namespace, which needs root. On a
# real cluster the runtime gives each container its own /proc and notebooks run as jovyan.
c.KubeSpawner.args = ["--allow-root"]
c.KubeSpawner.cpu_guarantee = 0.5
c.KubeSpawner.mem_guarantee = "512M"
c.KubeSpawner.storage_pvc_ensure = True
c.KubeSpawner.storage_capacity = "1Gi"
c.KubeSpawner.volumes = [{"name": "home", "persistentVolumeClaim": {"claimName": "{pvc_name}"}}]
c.KubeSpawner.volume_mounts = [{"name": "home", "mountPath": "/home/jovyan"}]
c.KubeSpawner.working_dir = "/home/jovyan"
c.KubeSpawner.start_timeout = 120
c.KubeSpawner.http_timeout = 60
c.KubeSpawner.delete_grace_period = 1

# jhub-suspend: the node agents and the registry of the local cluster.
c.SuspendingKubeSpawner.checkpoint_repository = cluster["checkpoint_repository"]
c.SuspendingKubeSpawner.agent_urls = cluster["agents"]
with open(cluster["agent_token_file"]) as f:
    c.SuspendingKubeSpawner.agent_token = f.read().strip()
