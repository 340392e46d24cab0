"""The node's container runtime: a real containerd with its CRI plugin, runc and CRIU.

The local cluster starts one containerd for all its nodes, with its own root, state, socket
and configuration under the cluster's state directory, so it never touches a containerd the
machine may run. What a node admin configures is set here the same way:

- the CRI plugin with the overlayfs snapshotter and a sandbox image from the local registry;
- ``restrict_oom_score_adj = true``: without it runc's init fails on this machine with
  "failed to update /proc/self/oom_score_adj: Permission denied";
- ``pod_annotations = ["org.criu.config"]``: runc hands CRIU the file this annotation names
  instead of ``/etc/criu/runc.conf``; tests use it to model a node without ``tcp-close``;
- a CNI ``bridge`` network with ``host-local`` addresses from the pod CIDR;
- a ``hosts.toml`` for the plain-HTTP local registry.

``runc`` and ``criu`` are found on containerd's PATH, which starts with the install prefix.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shutil
import signal
from pathlib import Path

from ..commands import run_command
from . import services
from .cri import CriClient, CriError

log = logging.getLogger(__name__)

#: where Debian's containernetworking-plugins put the CNI plugins
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
#: the network name in the CNI configuration (host-local keeps its leases under it)
CNI_NETWORK = "jhub-suspend-pods"
#: runc annotation naming CRIU's configuration file for this container
CRIU_CONFIG_ANNOTATION = "org.criu.config"

#: plugins this node never uses, disabled so that containerd starts quickly and quietly
DISABLED_PLUGINS = (
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.blockfile",
    "io.containerd.snapshotter.v1.erofs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
    "io.containerd.nri.v1.nri",
)


def gateway_address(cidr: str) -> str:
    """The bridge's address: the first host of ``cidr``."""
    return str(next(ipaddress.ip_network(cidr, strict=True).hosts()))


def cni_config(bridge: str, cidr: str, data_dir: str) -> dict:
    """A CNI network list: pods on ``bridge`` with addresses from ``cidr`` (pure).

    The bridge holds the gateway address, so the host reaches pods and pods reach servers
    that listen on the gateway (the hub). No masquerading: this range never leaves the machine.
    """
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": cidr, "gateway": gateway_address(cidr)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": data_dir,
                },
            },
        ],
    }


def hosts_toml(registry_host: str) -> str:
    """containerd's ``certs.d/HOST/hosts.toml`` for a plain-HTTP registry (pure)."""
    return (
        f'server = "http://{registry_host}"\n\n'
        f'[host."http://{registry_host}"]\n'
        '  capabilities = ["pull", "resolve", "push"]\n'
        "  skip_verify = true\n"
    )


def containerd_config(
    *,
    root: str,
    state: str,
    address: str,
    sandbox_image: str,
    runc: str,
    cni_conf_dir: str,
    certs_dir: str,
    criu_work: str,
    cni_bin_dirs: tuple[str, ...] = CNI_BIN_DIRS,
) -> str:
    """containerd 2.x configuration (version 3) for a local-cluster node (pure)."""

    def q(value: str) -> str:
        return json.dumps(value)  # a TOML basic string is a JSON string

    def qs(values: tuple[str, ...] | list[str]) -> str:
        return "[" + ", ".join(q(v) for v in values) + "]"

    cri_runtime = "plugins.'io.containerd.cri.v1.runtime'"
    runc_runtime = f"{cri_runtime}.containerd.runtimes.runc"
    images = "plugins.'io.containerd.cri.v1.images'"
    return f"""version = 3
root = {q(root)}
state = {q(state)}
disabled_plugins = {qs(DISABLED_PLUGINS)}

[grpc]
  address = {q(address)}

[ttrpc]
  address = {q(address + ".ttrpc")}

[{images}]
  snapshotter = "overlayfs"

[{images}.pinned_images]
  sandbox = {q(sandbox_image)}

[{images}.registry]
  config_path = {q(certs_dir)}

[{cri_runtime}]
  restrict_oom_score_adj = true
  enable_cdi = false

[{cri_runtime}.containerd]
  default_runtime_name = "runc"

[{runc_runtime}]
  runtime_type = "io.containerd.runc.v2"
  pod_annotations = {qs([CRIU_CONFIG_ANNOTATION])}

[{runc_runtime}.options]
  BinaryName = {q(runc)}
  SystemdCgroup = false
  CriuWorkPath = {q(criu_work)}

[{cri_runtime}.cni]
  bin_dirs = {qs(cni_bin_dirs)}
  conf_dir = {q(cni_conf_dir)}
  max_conf_num = 1

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


class Containerd:
    """containerd started for the local cluster, with its CRI client.

    ``stop()`` removes every pod sandbox first (their shims run on after containerd exits,
    as on a real node), then stops containerd.
    """

    def __init__(
        self,
        state_dir: str,
        *,
        bridge: str,
        pod_cidr: str,
        registry_host: str,
        sandbox_image: str,
        group: services.ProcessGroup | None = None,
    ) -> None:
        self.dir = Path(state_dir)
        # A unix socket path must stay under 108 bytes; the state directory may be long.
        self.address = str(self.dir / "containerd.sock")
        self.bridge = bridge
        self.pod_cidr = pod_cidr
        self.registry_host = registry_host
        self.sandbox_image = sandbox_image
        self.group = group
        self.process: services.ManagedProcess | None = None
        self.client: CriClient | None = None
        #: the runtime as a node reports it (``containerd://2.1.9``), once started
        self.runtime_version = ""

    @property
    def criu_work(self) -> Path:
        """Where runc has CRIU write its logs: kept after a failure, so the kubelet can say
        why a restore failed."""
        return self.dir / "criu-work"

    @property
    def content_dir(self) -> str:
        """containerd's content store: the blobs of the images it pulled."""
        return str(self.dir / "root" / "io.containerd.content.v1.content")

    @property
    def gateway(self) -> str:
        return gateway_address(self.pod_cidr)

    def write_config(self) -> Path:
        cni_dir = self.dir / "cni"
        certs = self.dir / "certs.d"
        dirs = (
            cni_dir,
            certs / self.registry_host,
            self.criu_work,
            self.dir / "root",
            self.dir / "state",
        )
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        (cni_dir / "10-jhub-suspend.conflist").write_text(
            json.dumps(
                cni_config(self.bridge, self.pod_cidr, str(self.dir / "cni-leases")), indent=2
            )
        )
        (certs / self.registry_host / "hosts.toml").write_text(hosts_toml(self.registry_host))
        config = self.dir / "config.toml"
        config.write_text(
            containerd_config(
                root=str(self.dir / "root"),
                state=str(self.dir / "state"),
                address=self.address,
                sandbox_image=self.sandbox_image,
                runc=services.find_binary("runc"),
                cni_conf_dir=str(cni_dir),
                certs_dir=str(certs),
                criu_work=str(self.criu_work),
            )
        )
        return config

    async def create_bridge(self) -> None:
        """The bridge with the gateway address, before any pod exists, so that servers for
        the pods (the hub) can listen on the gateway at once; the CNI bridge plugin then
        finds it ready."""
        ip = shutil.which("ip") or "ip"
        prefix = ipaddress.ip_network(self.pod_cidr).prefixlen
        link = await run_command([ip, "link", "show", self.bridge], timeout=15, check=False)
        if link.returncode != 0:
            await run_command([ip, "link", "add", self.bridge, "type", "bridge"], timeout=15)
        await run_command(
            [ip, "addr", "replace", f"{self.gateway}/{prefix}", "dev", self.bridge], timeout=15
        )
        await run_command([ip, "link", "set", self.bridge, "up"], timeout=15)

    async def start(self, timeout: float = 60.0) -> CriClient:
        if len(self.address) > 100:
            raise services.ServiceError(
                f"containerd's socket path {self.address} is too long for a unix socket; "
                "use a shorter state directory"
            )
        exe = services.find_binary("containerd")
        config = self.write_config()
        await self.create_bridge()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.address)
        prefix_bin = str(services.install_prefix() / "bin")
        env = {
            **os.environ,
            "PATH": f"{prefix_bin}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
        }
        self.process = services.ManagedProcess(
            "containerd",
            [exe, "--config", str(config), "--log-level", "info"],
            log_path=self.dir / "containerd.log",
            env=env,
            group=self.group,
        )
        await self.process.start()
        client = CriClient(self.address)

        async def answers() -> bool:
            if not os.path.exists(self.address):
                return False
            try:
                await client.version(timeout=2.0)
            except CriError:
                return False
            return True

        await self.process.wait_ready(answers, timeout=timeout)
        self.client = client
        version = await client.version()
        self.runtime_version = f"{version.runtime_name}://{version.runtime_version}"
        log.info(
            "containerd %s (CRI %s) on %s",
            version.runtime_version,
            version.runtime_api_version,
            self.address,
        )
        return client

    async def remove_all_pods(self) -> None:
        """Stop and remove every pod sandbox (and so its containers) this containerd runs."""
        if self.client is None:
            return
        try:
            sandboxes = await self.client.list_pod_sandboxes()
        except CriError as e:
            log.warning("listing pod sandboxes: %s", e)
            return
        for sb in sandboxes:
            try:
                await self.client.remove_pod_sandbox_and_containers(sb.id)
            except CriError as e:
                log.warning("removing sandbox %s: %s", sb.id[:12], e)

    async def stop(self) -> None:
        await self.remove_all_pods()
        if self.client is not None:
            await self.client.close()
            self.client = None
        if self.process is not None:
            await self.process.stop()
        await kill_leftover_shims(self.address)
        await delete_bridge(self.bridge)


async def kill_leftover_shims(address: str) -> None:
    """SIGKILL shims (and so their containers) that served the containerd at ``address``:
    they outlive containerd by design, and a cluster that is gone leaves none behind."""
    for pid in _shim_pids(address):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _shim_pids(address: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and address.encode() in argv:
            pids.append(int(entry))
    return pids


async def delete_bridge(bridge: str) -> None:
    ip = shutil.which("ip") or "ip"
    await run_command([ip, "link", "del", bridge], timeout=15, check=False)
