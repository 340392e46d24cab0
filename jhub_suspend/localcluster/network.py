"""Pod networking for the local cluster, as a CNI bridge plugin would do it.

One Linux bridge with the gateway address (the first host of the pod CIDR), and one network
namespace per pod under ``/run/netns``, joined to the bridge by a veth pair. The pod side is
``eth0`` with an address from the CIDR and a default route via the gateway. Only this private
range on this machine is used; the host does not forward it anywhere.

Everything is done with ``ip`` commands run as asyncio subprocesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import signal
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from ..commands import CommandError, run_command

log = logging.getLogger(__name__)

NETNS_DIR = "/run/netns"
POD_IFNAME = "eth0"
IP_TIMEOUT = 15.0


@dataclass(frozen=True)
class NetnsInfo:
    """A pod's network namespace."""

    name: str
    path: str
    ip: str
    gateway: str
    prefixlen: int = 24
    host_veth: str = ""

    @property
    def cidr_address(self) -> str:
        return f"{self.ip}/{self.prefixlen}"


class NetworkError(RuntimeError):
    """Setting up or tearing down pod networking failed."""


# --- pure helpers --------------------------------------------------------------------------


def gateway_address(cidr: str) -> str:
    """The gateway (bridge) address: the first host of ``cidr``."""
    net = ipaddress.ip_network(cidr, strict=True)
    return str(next(iter(_hosts(net))))


def _hosts(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Iterator[ipaddress._BaseAddress]:
    return iter(net.hosts())


def pod_addresses(cidr: str) -> Iterator[str]:
    """Addresses that may be given to pods: the hosts of ``cidr`` except the gateway."""
    net = ipaddress.ip_network(cidr, strict=True)
    hosts = _hosts(net)
    next(hosts)  # the gateway
    for addr in hosts:
        yield str(addr)


def allocate_address(cidr: str, used: Collection[str], after: str | None = None) -> str:
    """The next free pod address in ``cidr``, not in ``used``.

    The search starts after ``after`` (the last address handed out) and wraps around, so a
    just-released address is not handed out again at once. Raises ``NetworkError`` when the
    range is full.
    """
    candidates = list(pod_addresses(cidr))
    if not candidates:
        raise NetworkError(f"{cidr} has no addresses for pods")
    start = 0
    if after is not None and after in candidates:
        start = candidates.index(after) + 1
    taken = set(used)
    for i in range(len(candidates)):
        addr = candidates[(start + i) % len(candidates)]
        if addr not in taken:
            return addr
    raise NetworkError(f"no free address left in {cidr} ({len(taken)} in use)")


def host_veth_name(bridge: str, netns_name: str) -> str:
    """A stable host-side veth name (at most 15 characters) for a pod's namespace."""
    digest = hashlib.sha1(f"{bridge}/{netns_name}".encode()).hexdigest()[:10]
    return f"vjh{digest}"


def parse_netns_list(output: str) -> list[str]:
    """Names from ``ip netns list`` output (lines like ``name (id: 3)``)."""
    names = []
    for line in output.splitlines():
        line = line.strip()
        if line:
            names.append(line.split()[0])
    return names


def parse_ipv4_addresses(addr_json: str, ifname: str | None = None) -> list[tuple[str, int]]:
    """``(address, prefixlen)`` of IPv4 addresses in ``ip -j addr show`` output."""
    result = []
    for link in json.loads(addr_json or "[]"):
        if ifname is not None and link.get("ifname") != ifname:
            continue
        for info in link.get("addr_info", []):
            if info.get("family") == "inet":
                result.append((info["local"], int(info["prefixlen"])))
    return result


# --- the network ---------------------------------------------------------------------------


class PodNetwork:
    """The bridge and the pods' network namespaces."""

    def __init__(
        self, bridge: str = "jhs0", cidr: str = "10.98.0.0/24", netns_prefix: str = "jhs-"
    ) -> None:
        net = ipaddress.ip_network(cidr, strict=True)
        if not net.is_private:
            raise ValueError(f"{cidr} is not a private range")
        if net.version != 4:
            raise ValueError("only IPv4 pod ranges are supported")
        if len(bridge) > 15:
            raise ValueError(f"bridge name {bridge!r} is longer than 15 characters")
        self.bridge = bridge
        self.cidr = str(net)
        self.prefixlen = net.prefixlen
        self.gateway = gateway_address(self.cidr)
        self.netns_prefix = netns_prefix
        self._allocated: dict[str, str] = {}  # netns name -> address
        self._last: str | None = None
        self._lock = asyncio.Lock()
        self._recovered = False

    # internal helpers

    async def _ip(self, *args: str, check: bool = True) -> str:
        result = await run_command(["ip", *args], timeout=IP_TIMEOUT, check=check)
        return result.stdout

    async def _link_exists(self, name: str, netns: str | None = None) -> bool:
        args = ["-n", netns] if netns else []
        result = await run_command(
            ["ip", *args, "link", "show", "dev", name], timeout=IP_TIMEOUT, check=False
        )
        return result.returncode == 0

    async def _our_namespaces(self) -> list[str]:
        out = await self._ip("netns", "list")
        return [n for n in parse_netns_list(out) if n.startswith(self.netns_prefix)]

    async def _netns_address(self, name: str) -> tuple[str, int] | None:
        result = await run_command(
            ["ip", "-n", name, "-j", "-4", "addr", "show", "dev", POD_IFNAME],
            timeout=IP_TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            return None
        addrs = parse_ipv4_addresses(result.stdout, POD_IFNAME)
        return addrs[0] if addrs else None

    async def _recover(self) -> None:
        """Learn the addresses held by namespaces that already exist (a restarted cluster)."""
        if self._recovered:
            return
        net = ipaddress.ip_network(self.cidr)
        for name in await self._our_namespaces():
            found = await self._netns_address(name)
            if found and ipaddress.ip_address(found[0]) in net:
                self._allocated.setdefault(name, found[0])
                log.info("recovered netns %s with address %s", name, found[0])
        self._recovered = True

    # public interface

    async def setup(self) -> None:
        """Create the bridge with the gateway address and bring it up (idempotent)."""
        if not await self._link_exists(self.bridge):
            try:
                await self._ip("link", "add", "name", self.bridge, "type", "bridge")
            except CommandError:
                if not await self._link_exists(self.bridge):
                    raise
        out = await self._ip("-j", "-4", "addr", "show", "dev", self.bridge)
        gw = f"{self.gateway}/{self.prefixlen}"
        if (self.gateway, self.prefixlen) not in parse_ipv4_addresses(out):
            await self._ip("addr", "replace", gw, "dev", self.bridge)
        await self._ip("link", "set", "dev", self.bridge, "up")
        async with self._lock:
            await self._recover()
        log.info("pod network %s on bridge %s (gateway %s)", self.cidr, self.bridge, gw)

    def netns_path(self, name: str) -> str:
        return os.path.join(NETNS_DIR, name)

    async def create_netns(self, name: str) -> NetnsInfo:
        """Create the namespace ``name`` with a veth into the bridge and a fresh address.

        A namespace that already exists with an address of this network is returned as is.
        """
        if not name.startswith(self.netns_prefix):
            raise ValueError(f"netns name {name!r} must start with {self.netns_prefix!r}")
        veth = host_veth_name(self.bridge, name)
        async with self._lock:
            await self._recover()
            existing = await self._our_namespaces()
            if name in existing:
                found = await self._netns_address(name)
                if found and found[0] == self._allocated.get(name):
                    return NetnsInfo(
                        name, self.netns_path(name), found[0], self.gateway, found[1], veth
                    )
                # half-made: start again
                await self._delete(name)
            ip = allocate_address(self.cidr, self._allocated.values(), self._last)
            self._allocated[name] = ip
            self._last = ip
        try:
            await self._ip("netns", "add", name)
            if await self._link_exists(veth):
                await self._ip("link", "del", "dev", veth, check=False)
            await self._ip(
                "link", "add", "name", veth, "type", "veth", "peer", "name", POD_IFNAME,
                "netns", name,
            )  # fmt: skip
            await self._ip("link", "set", "dev", veth, "master", self.bridge)
            await self._ip("link", "set", "dev", veth, "up")
            await self._ip("-n", name, "link", "set", "dev", "lo", "up")
            await self._ip("-n", name, "addr", "add", f"{ip}/{self.prefixlen}", "dev", POD_IFNAME)
            await self._ip("-n", name, "link", "set", "dev", POD_IFNAME, "up")
            await self._ip("-n", name, "route", "add", "default", "via", self.gateway)
        except BaseException:
            async with self._lock:
                await self._delete(name)
            raise
        log.info(
            "netns %s: %s/%s via %s (host veth %s)", name, ip, self.prefixlen, self.gateway, veth
        )
        return NetnsInfo(name, self.netns_path(name), ip, self.gateway, self.prefixlen, veth)

    async def _delete(self, name: str) -> None:
        veth = host_veth_name(self.bridge, name)
        # Deleting the host end destroys the pair even while a process keeps the netns alive.
        if await self._link_exists(veth):
            await self._ip("link", "del", "dev", veth, check=False)
        if await asyncio.to_thread(os.path.exists, self.netns_path(name)):
            await self._ip("netns", "del", name, check=False)
        self._allocated.pop(name, None)

    async def delete_netns(self, name: str) -> None:
        """Remove the namespace and its veth pair, and free its address (idempotent)."""
        async with self._lock:
            await self._delete(name)
        log.info("netns %s deleted", name)

    async def teardown(self, kill_processes: bool = False) -> None:
        """Remove all of this network's namespaces and the bridge.

        With ``kill_processes``, first SIGKILL every process still inside those namespaces: the
        leftovers of a cluster that died without stopping its pods.
        """
        async with self._lock:
            names = set(await self._our_namespaces()) | set(self._allocated)
            for name in sorted(names):
                if kill_processes:
                    await self._kill_processes(name)
                await self._delete(name)
            if await self._link_exists(self.bridge):
                await self._ip("link", "del", "dev", self.bridge, check=False)
            self._recovered = False
        log.info("pod network on %s torn down", self.bridge)

    async def _kill_processes(self, name: str) -> None:
        result = await run_command(["ip", "netns", "pids", name], timeout=IP_TIMEOUT, check=False)
        for pid in result.stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
                log.warning("killed leftover process %s in netns %s", pid, name)

    def allocated(self) -> dict[str, str]:
        """Namespace name -> address, for the namespaces this network holds."""
        return dict(self._allocated)
