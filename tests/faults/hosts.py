"""Hosts on one machine: network namespaces joined to the machine by veth pairs (iproute2).

The machine itself is the API's host: a bridge there carries an address the API and its
redis-server listen on. Each worker host is a namespace with its own network stack and one
veth link into that bridge, so taking the link down cuts the host off as a pulled cable
would: nothing reaches it, nothing it sends arrives, and nothing tells either side.
Making namespaces needs root; `namespaces_unavailable()` says why they cannot be made.
"""

import ipaddress
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def namespaces_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    probe = f"tl-probe-{secrets.token_hex(3)}"
    try:
        ip("netns", "add", probe)
    except FileNotFoundError:
        return "iproute2's `ip` is not installed"
    except subprocess.CalledProcessError as error:
        return f"`ip netns add` failed: {error.stderr.strip()} (it needs root)"
    ip("netns", "del", probe)
    return None


@dataclass
class Host:
    name: str
    namespace: str
    # The machine's end of the host's link, in the bridge.
    link: str
    address: str

    def command(self, *argv: str) -> list[str]:
        """`argv` run inside the host's network namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def link_down(self) -> None:
        ip("link", "set", self.link, "down")

    def link_up(self) -> None:
        ip("link", "set", self.link, "up")


@dataclass
class Network:
    """A bridge on the machine with an address of its own, and the hosts linked to it."""

    suffix: str
    subnet: ipaddress.IPv4Network
    hosts: list[Host] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"tlbr-{self.suffix}"

    @property
    def address(self) -> str:
        """The machine's address on this network: the API's host, as workers reach it."""
        return str(self.subnet[1])

    def add_host(self, name: str) -> Host:
        index = len(self.hosts) + 1
        host = Host(
            name=name,
            namespace=f"tl{index}-{self.suffix}",
            link=f"tlv{index}-{self.suffix}",
            address=str(self.subnet[index + 1]),
        )
        ip("netns", "add", host.namespace)
        self.hosts.append(host)
        peer = ["peer", "name", "eth0", "netns", host.namespace]
        ip("link", "add", host.link, "type", "veth", *peer)
        ip("link", "set", host.link, "master", self.bridge, "up")
        address = f"{host.address}/{self.subnet.prefixlen}"
        ip("-n", host.namespace, "addr", "add", address, "dev", "eth0")
        ip("-n", host.namespace, "link", "set", "eth0", "up")
        ip("-n", host.namespace, "link", "set", "lo", "up")
        return host


@contextmanager
def network() -> Iterator[Network]:
    """A fresh bridge and subnet, removed with every host's namespace and link afterwards."""
    suffix = secrets.token_hex(3)
    # A /24 in 10.0.0.0/8 picked at random, so that runs side by side do not collide.
    second, third = secrets.randbelow(200) + 50, secrets.randbelow(256)
    subnet = ipaddress.IPv4Network(f"10.{second}.{third}.0/24")
    made = Network(suffix, subnet)
    ip("link", "add", made.bridge, "type", "bridge")
    try:
        ip("addr", "add", f"{made.address}/{subnet.prefixlen}", "dev", made.bridge)
        ip("link", "set", made.bridge, "up")
        yield made
    finally:
        for host in made.hosts:
            # Deleting the namespace deletes its end of the veth pair, and so the pair.
            subprocess.run(["ip", "netns", "del", host.namespace], check=False, timeout=10)
        subprocess.run(["ip", "link", "del", made.bridge], check=False, timeout=10)
